#!/bin/sh
# Entry point of the rnntune image: `docker run IMAGE worker|init|evaluate|status ...`.
#
# 1. Checks the directories the command writes to, so a permission problem is one clear line
#    with its fix instead of a traceback.
# 2. One worker per GPU (docker-compose.gpu.yml): with RNNTUNE_GPUS=0,1,2,3 each `worker` takes
#    the first free slot of that list (an flock on a host-local volume, held for the life of the
#    process, released by the kernel however it ends) and sees only that GPU. So
#    `--scale worker=4` on a 4-GPU host is one worker per GPU; list a GPU twice for two workers
#    on it. A worker that finds every slot taken has nothing to do and exits 0.
# 3. Replaces itself with rnntune, so `docker stop`'s SIGTERM reaches rnntune directly
#    (graceful stop, exit 0), through tini where compose sets `init: true`.
set -eu

need_writable() {  # need_writable DIR WHAT
    mkdir -p "$1" 2>/dev/null || true
    if [ ! -w "$1" ]; then
        echo "rnntune-entrypoint: $2 $1 is not writable by uid $(id -u) gid $(id -g)." >&2
        echo "  Create it as the user whose uid the image was built with (RNNTUNE_UID/RNNTUNE_GID" >&2
        echo "  in .env, default 1000:1000), e.g. \`mkdir -p reports\` before \`docker compose up\`," >&2
        echo "  or \`chown $(id -u):$(id -g)\` it; then run the command again." >&2
        exit 77
    fi
}

claim_gpu() {  # claim_gpu SLOTS_DIR: first free slot of RNNTUNE_GPUS; fd 9 holds the lock
    i=0
    for gpu in $(echo "$RNNTUNE_GPUS" | tr ',' ' '); do
        exec 9>"$1/slot-$i.lock"
        if flock --nonblock 9; then
            CUDA_VISIBLE_DEVICES=$gpu
            export CUDA_VISIBLE_DEVICES
            echo "rnntune-entrypoint: GPU $gpu (slot $i of RNNTUNE_GPUS=$RNNTUNE_GPUS)" >&2
            return 0
        fi
        exec 9>&-
        i=$((i + 1))
    done
    return 1
}

command=${1:-}
case "$command" in
    worker | evaluate | run)
        need_writable "${RNNTUNE_ARTIFACTS:-/artifacts}" "the artifact directory (RNNTUNE_ARTIFACTS)"
        ;;
esac
case "$command" in
    evaluate | run)
        need_writable "${RNNTUNE_OUT:-/reports}" "the report directory (RNNTUNE_OUT)"
        ;;
esac
if [ "$command" = worker ] && [ -n "${RNNTUNE_GPUS:-}" ]; then
    slots=${RNNTUNE_GPU_SLOTS_DIR:-/var/lib/rnntune/gpu-slots}
    need_writable "$slots" "the GPU slot directory (RNNTUNE_GPU_SLOTS_DIR)"
    if ! claim_gpu "$slots"; then
        echo "rnntune-entrypoint: every GPU slot in RNNTUNE_GPUS=$RNNTUNE_GPUS has a worker;" \
            "this one has nothing to do (scale workers to the number of slots)." >&2
        exit 0
    fi
fi

exec rnntune "$@"
