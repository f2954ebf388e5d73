"""Cost of the report's reference points (majority class, 1-NN or logistic regression).

Prints, per data spec, the split's shape, the seconds each reference point took and its test
macro F1, plus 1-NN against logistic regression on the same split (a ratio measured in this
run). Example:

    python benchmarks/baselines.py                       # default synthetic and 5,000 x 500 x 1
    python benchmarks/baselines.py --data synthetic:n=170000
"""

from __future__ import annotations

import argparse
import time

from rnntune.baselines import logistic_regression, one_nn, reference_points
from rnntune.data import load_dataset, split_dataset

DEFAULT_SPECS = ("synthetic", "synthetic:n=5000,length=500,features=1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help="a --data spec (repeatable)")
    args = parser.parse_args()
    for spec in args.data or DEFAULT_SPECS:
        s = split_dataset(load_dataset(spec), seed=0)
        t0 = time.perf_counter()
        refs = reference_points(s.X_train, s.y_train, s.X_test, s.y_test)
        total = time.perf_counter() - t0
        print(f"{spec}: train {s.X_train.shape}, test {s.X_test.shape}")
        print(f"  reference points: {total:.2f} s ({refs['choice']})")
        for p in refs["points"]:
            f1 = p["metrics"]["macro_f1"]
            print(f"    {p['label']:<28} {p['seconds']:8.2f} s   macro F1 {f1:.3f}")
        if refs["points"][1]["name"] == "1nn":
            lr = logistic_regression(s.X_train, s.y_train, s.X_test, s.y_test)
            nn = one_nn(s.X_train, s.y_train, s.X_test, s.y_test)
            print(
                f"  1-NN {nn['seconds']:.2f} s vs logistic regression {lr['seconds']:.2f} s "
                f"(ratio {nn['seconds'] / max(lr['seconds'], 1e-9):.2f}); macro F1 "
                f"{nn['metrics']['macro_f1']:.3f} vs {lr['metrics']['macro_f1']:.3f}"
            )


if __name__ == "__main__":
    main()
