from rnntune.cli import main

main()
