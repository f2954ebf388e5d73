#!/bin/sh
# Entry point of the rnntune image: `docker run IMAGE worker|init|evaluate|status ...`.
#
# Started as root (the image has no USER, like the official postgres and redis images), it
# prepares the mounts and drops privileges before anything of rnntune runs:
#   1. The user to run as. For the commands that write reports (evaluate, run, report): the
#      owner of the report directory (RNNTUNE_OUT, the bind-mounted ./reports), so the files
#      are theirs whoever ran the quick start. Otherwise, and when that owner is root, the
#      image's user rnntune (uid:gid 1000:1000 unless built or run with RNNTUNE_UID/RNNTUNE_GID).
#      Never root: rnntune is not run (and never trains) as uid 0.
#   2. The shared volumes (the artifact directory, the GPU slots) are made usable by every such
#      user: group rnntune, group-writable, setgid directories (only the entries that need it),
#      and rnntune runs in that group with umask 002.
#   3. setpriv drops to that uid/gid (no capabilities, no_new_privs) and runs this script again.
#      A report directory that belongs to root (root ran the quick start, or Docker created
#      ./reports) is lent to that user for the run (the directory and its *_plots directories)
#      and given back afterwards, the new files with it, so they belong to root like it (a run
#      killed meanwhile leaves a marker, .rnntune-lent, and the next start hands it back).
# As any other user (Kubernetes' runAsUser, `docker run --user`) it goes straight to:
#   4. Checks the directories the command writes to, so a permission problem is one clear line
#      with its fix instead of a traceback.
#   5. One worker per GPU (docker-compose.gpu.yml): with RNNTUNE_GPUS=0,1,2,3 each `worker` takes
#      the first free slot of that list (an flock on a host-local volume, held for the life of
#      the process, released by the kernel however it ends) and sees only that GPU. So
#      `--scale worker=4` on a 4-GPU host is one worker per GPU; list a GPU twice for two
#      workers on it. A worker that finds every slot taken has nothing to do and exits 0.
#   6. Replaces itself with rnntune, so `docker stop`'s SIGTERM reaches rnntune directly
#      (graceful stop, exit 0), through tini where compose sets `init: true`.
set -eu

say() { echo "rnntune-entrypoint: $*" >&2; }

command=${1:-}
out=${RNNTUNE_OUT:-/reports}
slots=${RNNTUNE_GPU_SLOTS_DIR:-/var/lib/rnntune/gpu-slots}

# -- as root: choose the user, fix the shared volumes, drop privileges -------------------------

share() {  # share DIR: group $group, group-writable, setgid directories; what can't be, is left
    mkdir -p "$1" 2>/dev/null || return 0
    find "$1" ! -group "$group" -exec chgrp -h "$group" {} + 2>/dev/null || true
    find "$1" -type d ! -perm -2070 -exec chmod g+rwxs {} + 2>/dev/null || true
    find "$1" -type f ! -perm -0060 -exec chmod g+rw {} + 2>/dev/null || true
}

drop() {  # drop UID GID ARGS...: replaced by this script again, as UID:GID in the group $group
    uid=$1 gid=$2
    shift 2
    # The assertion the whole design rests on: nothing of rnntune runs as root.
    [ "$uid" != 0 ] && [ "$gid" != 0 ] || { say "refusing to run rnntune as root"; exit 70; }
    home=/tmp
    [ "$uid" != "$image_uid" ] || home=$image_home
    HOME=$home exec setpriv --reuid="$uid" --regid="$gid" --groups="$group" \
        --inh-caps=-all --bounding-set=-all --no-new-privs /bin/sh "$0" "$@"
}

if [ "$(id -u)" = 0 ]; then
    umask 0002
    image_uid=$(id -u rnntune 2>/dev/null || echo 1000)
    image_gid=$(id -g rnntune 2>/dev/null || echo 1000)
    image_home=$(getent passwd rnntune 2>/dev/null | cut -d: -f6)
    image_home=${image_home:-/tmp}
    uid=${RNNTUNE_UID:-$image_uid}
    gid=${RNNTUNE_GID:-$image_gid}
    if [ "$uid" = 0 ] || [ "$gid" = 0 ]; then
        say "RNNTUNE_UID/RNNTUNE_GID=0 ignored: rnntune never runs as root; it runs as" \
            "$image_uid:$image_gid and the reports take the owner of their directory"
        uid=$image_uid gid=$image_gid
    fi
    group=$gid
    case "$command" in
        worker | evaluate | run) share "${RNNTUNE_ARTIFACTS:-/artifacts}" ;;
    esac
    if [ "$command" = worker ] && [ -n "${RNNTUNE_GPUS:-}" ]; then share "$slots"; fi
    case "$command" in
        evaluate | run | report)
            if [ ! -e "$out" ] && mkdir -p "$out" 2>/dev/null; then chown "$uid:$gid" "$out"; fi
            marker=$out/.rnntune-lent  # root's, while the directory is lent: "uid:gid" of root's
            if [ -f "$marker" ] && [ "$(stat -c %u "$marker")" = 0 ]; then
                # A run that held root's directory was killed (SIGKILL, OOM): hand it back first.
                lent_to=$(stat -c %u:%g "$out")
                find "$out" -user "${lent_to%:*}" -group "${lent_to#*:}" \
                    -exec chown -h "$(cat "$marker")" {} + || true
                rm -f "$marker"
            fi
            if [ -d "$out" ]; then
                owner=$(stat -c %u "$out")
                owner_gid=$(stat -c %g "$out")
                if [ "$owner" != 0 ]; then
                    # The owner's files: run as the owner (its group, unless that is root's).
                    [ "$owner_gid" = 0 ] || gid=$owner_gid
                    exec_as_owner=$owner
                else
                    # Root's directory: lend it to the user for the run (the directory and
                    # rnntune's *_plots directories in it, nothing else: the host's user with
                    # that uid owns them meanwhile), then hand back everything that user owns
                    # there. Signals reach rnntune through this shell.
                    lender="0:$owner_gid"
                    echo "$lender" >"$marker"
                    chown --from="$lender" "$uid:$gid" "$out"
                    find "$out" -mindepth 1 -maxdepth 1 -type d -name '*_plots' \
                        -exec chown -R --from="$lender" "$uid:$gid" {} + 2>/dev/null || true
                    (drop "$uid" "$gid" "$@") &
                    child=$!
                    for sig in TERM INT HUP QUIT; do
                        # shellcheck disable=SC2064  # $child is known now
                        trap "kill -$sig $child 2>/dev/null || true" "$sig"
                    done
                    while :; do
                        status=0
                        wait "$child" || status=$?
                        kill -0 "$child" 2>/dev/null || break  # else: a trapped signal woke us
                    done
                    find "$out" -user "$uid" -group "$gid" -exec chown -h "$lender" {} + || true
                    rm -f "$marker"
                    exit "$status"
                fi
            fi
            ;;
    esac
    drop "${exec_as_owner:-$uid}" "$gid" "$@"
fi

# -- as the user rnntune runs as -----------------------------------------------------------------

need_writable() {  # need_writable DIR WHAT
    mkdir -p "$1" 2>/dev/null || true
    if [ ! -w "$1" ]; then
        say "$2 $1 is not writable by uid $(id -u) gid $(id -g)."
        echo "  Start the container as root (the default) and the entrypoint runs rnntune as the" >&2
        echo "  directory's owner; with a fixed user (Kubernetes runAsUser, docker run --user) make" >&2
        echo "  it writable by that uid or gid (fsGroup, or \`chown $(id -u):$(id -g)\` it); then run" >&2
        echo "  the command again." >&2
        exit 77
    fi
}

claim_gpu() {  # claim_gpu SLOTS_DIR: first free slot of RNNTUNE_GPUS; fd 9 holds the lock
    i=0
    for gpu in $(echo "$RNNTUNE_GPUS" | tr ',' ' '); do
        exec 9>>"$1/slot-$i.lock"
        if flock --nonblock 9; then
            CUDA_VISIBLE_DEVICES=$gpu
            export CUDA_VISIBLE_DEVICES
            say "GPU $gpu (slot $i of RNNTUNE_GPUS=$RNNTUNE_GPUS)"
            return 0
        fi
        exec 9>&-
        i=$((i + 1))
    done
    return 1
}

need_secret() {  # need_secret VAR: the file named by $VAR, if set, is readable and non-empty
    eval "file=\${$1:-}"
    [ -n "$file" ] || return 0
    if [ -d "$file" ]; then
        say "$1=$file is a directory, not a file: the password file was missing on the host,"
        echo "  so Docker (docker run -v) mounted an empty directory in its place. Remove the" >&2
        echo "  directory Docker made there, create the file (README, \"Quick start\": mkdir -p -m" >&2
        echo "  700 secrets && for s in db_password worker_db_password dashboard_db_password; do" >&2
        echo "  openssl rand -hex 24 >secrets/\$s && chmod 644 secrets/\$s; done), then start again." >&2
        exit 78
    elif [ ! -e "$file" ]; then
        say "$1=$file does not exist: mount the password file there (a Docker secret," \
            "a Kubernetes Secret volume), then start the container again."
        exit 78
    elif [ ! -r "$file" ]; then
        say "$1=$file is not readable by uid $(id -u) gid $(id -g): make the file on the host" \
            "readable by it (chmod 644 it; its directory may stay private), then start again."
        exit 78
    elif [ ! -s "$file" ]; then
        say "$1=$file is empty: write the password into it (openssl rand -hex 24 >FILE)," \
            "then start again."
        exit 78
    fi
}

# Before anything else: a missing secret is one clear line, not a connection error later.
for var in RNNTUNE_STORAGE_PASSWORD_FILE RNNTUNE_WORKER_ROLE_PASSWORD_FILE \
    RNNTUNE_DASHBOARD_ROLE_PASSWORD_FILE; do
    need_secret "$var"
done

case "$command" in
    worker | evaluate | run)
        need_writable "${RNNTUNE_ARTIFACTS:-/artifacts}" "the artifact directory (RNNTUNE_ARTIFACTS)"
        ;;
esac
case "$command" in
    evaluate | run)
        need_writable "$out" "the report directory (RNNTUNE_OUT)"
        ;;
esac
if [ "$command" = worker ] && [ -n "${RNNTUNE_GPUS:-}" ]; then
    need_writable "$slots" "the GPU slot directory (RNNTUNE_GPU_SLOTS_DIR)"
    if ! claim_gpu "$slots"; then
        say "every GPU slot in RNNTUNE_GPUS=$RNNTUNE_GPUS has a worker;" \
            "this one has nothing to do (scale workers to the number of slots)."
        exit 0
    fi
fi

exec rnntune "$@"
