#!/usr/bin/env bash
# The Compose stack for real: build, `up --scale worker=4` on a tiny experiment, kill a worker,
# crash another (its restart policy must bring it back), stop and start the whole stack mid-run,
# wait for evaluate to exit 0, then check the report (exact budgets, each repeat once), who owns
# the report files and who runs rnntune, and the dashboard. `docker compose down -v` runs at the
# end whatever happened. It follows the README's quick start as is: no RNNTUNE_UID, no `mkdir
# reports` or `chown` (Docker creates ./reports, owned by root when the engine runs as root).
#
#   bash tests/compose/smoke.sh            # with Docker; as root on a build machine without a
#                                          # registry, ../shared/docker/standins supplies the images
#
# Settings (environment): SMOKE_TRIALS (4), SMOKE_REPEATS (3), SMOKE_MAX_EPOCHS (3),
# SMOKE_TIMEOUT (seconds for the whole run, 1500), SMOKE_KEEP=1 (leave the stack up for a look;
# remove it with the `down -v` line it prints), SMOKE_SKIP_STANDINS=1 (the engine and the base
# images are already there).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${RNNTUNE_SHARED:-$REPO/../shared}
TRIALS=${SMOKE_TRIALS:-4}
REPEATS=${SMOKE_REPEATS:-3}
MAX_EPOCHS=${SMOKE_MAX_EPOCHS:-3}
DEADLINE=$((SECONDS + ${SMOKE_TIMEOUT:-1500}))
EXPERIMENT=smoke
FAMILIES=(rnn gru lstm)

T0=$SECONDS
STEP_T=$SECONDS
STEP_NAME=
TIMINGS=()
step() {  # step NAME: close the previous step's timing, open the next one
    if [ -n "$STEP_NAME" ]; then TIMINGS+=("$(printf '%5ss  %s' $((SECONDS - STEP_T)) "$STEP_NAME")"); fi
    STEP_NAME=$1
    STEP_T=$SECONDS
    printf '\n[smoke %4ss] == %s\n' $((SECONDS - T0)) "$1"
}
say() { printf '[smoke %4ss] %s\n' $((SECONDS - T0)) "$*"; }
fail() { say "FAIL: $*"; exit 1; }
left() { echo $((DEADLINE - SECONDS)); }

# -- the engine and the base images -------------------------------------------------------------
step "standins (docker engine, compose shim, python:3.11-slim, postgres)"
if [ "${SMOKE_SKIP_STANDINS:-0}" != 1 ] && [ -f "$SHARED/docker/standins" ] && [ "$(id -u)" = 0 ]; then
    bash "$SHARED/docker/standins" >/tmp/rnntune-smoke-standins.log 2>&1 \
        || { tail -20 /tmp/rnntune-smoke-standins.log; fail "standins failed"; }
fi
docker info >/dev/null 2>&1 || fail "no docker engine answers"
PG_IMAGE=postgres:17
if ! docker image inspect "$PG_IMAGE" >/dev/null 2>&1; then
    say "postgres:17 is not available here (standins skips it when trixie is gone): postgres:15"
    PG_IMAGE=postgres:15
fi

# -- a private project: its own name, .env, reports, data, image tags and dashboard port -------
WORK=$(mktemp -d /tmp/rnntune-smoke.XXXXXX)
PROJECT=rnntunesmoke$$
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/data"   # not reports: Docker creates it, as for a user who did not
# The three password files, the README's way (as root here, no chown: the containers' users,
# postgres 999 and rnntune 1000 or the reports' owner, must still read them).
(cd "$WORK" && mkdir -p -m 700 secrets && for s in db_password worker_db_password dashboard_db_password; do
    openssl rand -hex 24 >secrets/$s && chmod 644 secrets/$s; done)
# The workers' password holds URL-special characters on purpose: rnntune puts it into the URL.
printf 'w@%s:/\n' "$(openssl rand -hex 16)" >"$WORK/secrets/worker_db_password"
cat >"$WORK/.env" <<EOF
RNNTUNE_SECRETS_DIR=$WORK/secrets
RNNTUNE_POSTGRES_IMAGE=$PG_IMAGE
RNNTUNE_EXPERIMENT=$EXPERIMENT
# Big enough that trials last a few seconds: the faults below must land while tuning runs.
RNNTUNE_DATA=synthetic:n=2400,length=40,features=4,seed=0
RNNTUNE_TRIALS=$TRIALS
RNNTUNE_REPEATS=$REPEATS
RNNTUNE_MAX_EPOCHS=$MAX_EPOCHS
RNNTUNE_HEARTBEAT_INTERVAL=2
RNNTUNE_GRACE_PERIOD=10
RNNTUNE_DASHBOARD_PORT=$PORT
RNNTUNE_REPORTS_DIR=$WORK/reports
RNNTUNE_DATA_DIR=$WORK/data
RNNTUNE_WORKER_IMAGE=rnntune-worker:smoke
RNNTUNE_DASHBOARD_IMAGE=rnntune-dashboard:smoke
EOF
# -f: only the real file (a developer's docker-compose.override.yml stays out of it);
# --env-file: this .env, not the checkout's.
dc() { docker compose --env-file "$WORK/.env" -p "$PROJECT" -f "$REPO/docker-compose.yml" "$@"; }
ids() {  # container ids of a service, running or not
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1"
}
state() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$1"; }
psql_db() {
    docker exec "$(ids db)" psql -U rnntune -d rnntune -tAc "$1" 2>/dev/null || echo "?"
}
trials_in() { psql_db "SELECT count(*) FROM trials WHERE state IN ($1)"; }

OK=0
cleanup() {
    local rc=$?
    step "cleanup"
    if [ "$OK" != 1 ]; then
        say "logs (the last 50 lines of each service):"
        dc logs --no-color --tail=50 2>&1 || true
        dc ps 2>&1 || true
    fi
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
        say "left up: docker compose --env-file $WORK/.env -p $PROJECT -f $REPO/docker-compose.yml down -v"
    else
        dc down -v --remove-orphans >/dev/null 2>&1 || dc down -v >/dev/null 2>&1 || true
        rm -rf "$WORK"
    fi
    step "done"
    printf '\nstep timings:\n'
    printf '  %s\n' "${TIMINGS[@]}"
    printf '  %5ss  total\n' $((SECONDS - T0))
    if [ "$OK" = 1 ]; then echo "smoke: PASS"; else echo "smoke: FAIL (rc $rc)"; fi
    [ "$OK" = 1 ] || exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say "project $PROJECT, dir $WORK, dashboard port $PORT, $PG_IMAGE, run by uid $(id -u)"
say "experiment: $TRIALS trials per family, $REPEATS repeats, $MAX_EPOCHS epochs"

# -- build and start --------------------------------------------------------------------------------
step "docker compose build"
dc build

step "docker compose up -d --scale worker=4 (waits for db healthy, then init)"
dc up -d --scale worker=4
mapfile -t WORKERS < <(ids worker)
[ "${#WORKERS[@]}" = 4 ] || fail "expected 4 worker containers, got ${#WORKERS[@]}"
[ "$(state "$(ids init)")" = "exited 0 0" ] || fail "init did not complete: $(state "$(ids init)")"

step "wait until trials are running"
until [ "$(trials_in "'RUNNING'")" -ge 2 ] 2>/dev/null; do
    [ "$(left)" -gt 0 ] || fail "no trials running"
    done_=$(trials_in "'COMPLETE','PRUNED'")
    if [ "$done_" != "?" ] && [ "$done_" -ge $((TRIALS * ${#FAMILIES[@]})) ]; then
        fail "tuning finished before a fault could land: make the smoke experiment bigger"
    fi
    sleep 0.5
done
say "running: $(trials_in "'RUNNING'"), finished: $(trials_in "'COMPLETE','PRUNED'")"

step "nothing of rnntune runs as root"
# The entrypoint starts as root, drops privileges with setpriv and refuses uid 0: every rnntune
# process in the workers and in evaluate has a non-root uid (`docker top` shows host uids).
seen=0
for c in $(ids worker) $(ids evaluate); do
    top=$(docker top "$c" -eo pid,uid,args) || continue  # not running (restarting, or done)
    procs=$(echo "$top" | grep "bin/rnntune " || true)
    [ -n "$procs" ] || continue  # between processes
    seen=$((seen + 1))
    if echo "$procs" | awk '$2 == 0 || $2 == "root" { bad = 1 } END { exit !bad }'; then
        fail "rnntune runs as root in ${c:0:12}: $procs"
    fi
    say "${c:0:12}: rnntune as $(echo "$procs" | awk '{ print "uid " $2 }' | sort -u | xargs)"
done
[ "$seen" -gt 0 ] || fail "no rnntune process found with docker top: the check saw nothing"

# -- faults -----------------------------------------------------------------------------------------
step "docker kill one worker mid-trial"
docker kill "${WORKERS[0]}" >/dev/null
sleep 1
read -r status code _ <<<"$(state "${WORKERS[0]}")"
[ "$status $code" = "exited 137" ] || fail "killed worker is $status $code, expected exited 137"
say "worker ${WORKERS[0]:0:12}: killed (a manual kill: docker does not restart it)"

if [ "$(id -u)" = 0 ]; then
    step "crash another worker (SIGKILL from outside docker): its restart policy brings it back"
    victim=${WORKERS[1]}
    pid=$(docker inspect -f '{{.State.Pid}}' "$victim")
    # 0: the worker already exited (nothing left to do); `kill 0` would hit this script.
    [ "$pid" -gt 0 ] || fail "worker ${victim:0:12} is not running ($(state "$victim")): make the smoke experiment bigger"
    kill -KILL "$pid"
    until [ "$(docker inspect -f '{{.RestartCount}}' "$victim")" -ge 1 ] \
        && [ "$(docker inspect -f '{{.State.Status}}' "$victim")" = running ]; do
        [ "$(left)" -gt 0 ] || fail "crashed worker was not restarted: $(state "$victim")"
        sleep 0.5
    done
    say "worker ${victim:0:12}: restarted by its restart policy ($(state "$victim"))"
else
    say "not root: skipping the crash/restart-policy check (needs to signal a host pid)"
fi

step "docker compose stop, then start, mid-run"
finished=$(trials_in "'COMPLETE','PRUNED'")
say "before stop: finished trials $finished of $((TRIALS * ${#FAMILIES[@]}))"
if [ "$finished" = "?" ] || [ "$finished" -ge $((TRIALS * ${#FAMILIES[@]})) ]; then
    say "note: tuning already finished; the stop/start lands in the evaluation stage"
fi
t_stop=$SECONDS
dc stop
say "stop took $((SECONDS - t_stop))s"
for w in "${WORKERS[@]:1}"; do  # [0] was killed above and stayed down
    read -r status code _ <<<"$(state "$w")"
    # 0: it handed its work back. 143: SIGTERM came while it was still starting, before rnntune
    # installed its handler (nothing to hand back). 137: still busy when stop_grace_period ran
    # out, SIGKILLed: a failure.
    case "$status $code" in
        "exited 0" | "exited 143") say "worker ${w:0:12}: stopped, exit $code" ;;
        *) fail "worker ${w:0:12} did not stop gracefully: $status $code" ;;
    esac
done
say "evaluate stopped with $(state "$(ids evaluate)")"
dc start

step "wait for evaluate to exit 0"
EVALUATE=$(ids evaluate)
while :; do
    read -r status code restarts <<<"$(state "$EVALUATE")"
    [ "$status" = exited ] && break
    [ "$(left)" -gt 0 ] || fail "evaluate still $status after the time limit"
    sleep 2
done
[ "$code" = 0 ] || fail "evaluate exited $code (restarts: $restarts)"
say "evaluate exited 0 (restarts: $restarts)"

# -- results ----------------------------------------------------------------------------------------
step "check reports/report.json: exact budgets, each repeat exactly once"
for f in report.md report.json report.html; do
    [ -s "$WORK/reports/$f" ] || fail "reports/$f is missing or empty"
done
python3 - "$WORK/reports/report.json" "$EXPERIMENT" "$TRIALS" "$REPEATS" "${FAMILIES[@]}" <<'EOF'
import json
import sys

path, experiment, trials, repeats, *families = sys.argv[1:]
trials, repeats = int(trials), int(repeats)
report = json.load(open(path))
problems = []
if not report.get("complete"):
    problems.append(f"report says incomplete: {report.get('missing')}")
for family in families:
    fam = report["families"].get(family)
    if fam is None:
        problems.append(f"{family}: missing from the report")
        continue
    if fam["study_name"] != f"{experiment}.{family}":
        problems.append(f"{family}: study {fam['study_name']!r}")
    t = fam["trials"]
    finished = t["complete"] + t["pruned"]
    if finished != trials or t["running"] or t["waiting"]:
        problems.append(f"{family}: {t} (want complete + pruned == {trials}, none live)")
    got = sorted(r["repeat"] for r in fam["repeats"])
    if got != list(range(repeats)):
        problems.append(f"{family}: repeats {got}, want each of 0..{repeats - 1} once")
    not_done = [r["repeat"] for r in fam["repeats"] if r["status"] != "done"]
    if not_done:
        problems.append(f"{family}: repeats {not_done} not done")
    print(f"  {family}: trials {t}, repeats {got}")
if problems:
    print("\n".join("  PROBLEM: " + p for p in problems))
    sys.exit(1)
EOF
step "the report files belong to the owner of ./reports"
# Docker created ./reports (owned by the engine's user, root here); rnntune ran unprivileged
# and the files were handed to the directory's owner. Then `report` into directories of other
# owners (uid 1000 as after `mkdir reports` by the first user, another uid, a missing one).
want=$(stat -c %u:%g "$WORK/reports")
for f in report.md report.json report.html report_plots; do
    got=$(stat -c %u:%g "$WORK/reports/$f")
    [ "$got" = "$want" ] || fail "reports/$f belongs to $got, the directory to $want"
done
say "reports/ and its files belong to $want"
mkdir -p "$WORK/reports-1000" "$WORK/reports-4321"
if [ "$(id -u)" = 0 ]; then chown 1000:1000 "$WORK/reports-1000"; chown 4321:4322 "$WORK/reports-4321"; fi
for d in "$WORK/reports-1000" "$WORK/reports-4321" "$WORK/reports-missing"; do
    RNNTUNE_REPORTS_DIR=$d dc run --rm --no-deps evaluate report --format csv --out /reports/report.csv \
        >/dev/null 2>"$WORK/report-run.log" || { cat "$WORK/report-run.log"; fail "report into $d failed"; }
    want=$(stat -c %u:%g "$d")
    got=$(stat -c %u:%g "$d/report.csv")
    [ "$got" = "$want" ] || fail "$d/report.csv belongs to $got, the directory to $want"
    say "report into ${d##*/} (owner $want): report.csv belongs to $got"
done

step "workers exit 0 when nothing is left, and stay down"
for w in "${WORKERS[@]}"; do
    while [ "$(docker inspect -f '{{.State.Status}}' "$w")" != exited ]; do
        [ "$(left)" -gt 0 ] || fail "worker ${w:0:12} still $(state "$w")"
        sleep 1
    done
done
sleep 3  # a restart policy that loops would have restarted them by now
for w in "${WORKERS[@]}"; do
    read -r status code restarts <<<"$(state "$w")"
    [ "$status $code" = "exited 0" ] || fail "worker ${w:0:12}: $status $code, want exited 0"
    say "worker ${w:0:12}: exited 0 (restarts: $restarts)"
done

step "dashboard: / and /api/studies list the three studies"
until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/api/meta" 2>/dev/null; do
    [ "$(left)" -gt 0 ] || fail "the dashboard does not answer on 127.0.0.1:$PORT"
    sleep 1
done
curl -fsSL -o "$WORK/index.html" "http://127.0.0.1:$PORT/" || fail "GET / failed"
grep -qi "<html" "$WORK/index.html" || fail "GET / is not the dashboard page"
curl -fsS -o "$WORK/studies.json" "http://127.0.0.1:$PORT/api/studies" || fail "GET /api/studies"
python3 - "$WORK/studies.json" "$EXPERIMENT" "${FAMILIES[@]}" <<'EOF'
import json
import sys

path, experiment, *families = sys.argv[1:]
names = {s["study_name"] for s in json.load(open(path))["study_summaries"]}
want = {f"{experiment}.{f}" for f in families}
print(f"  studies: {sorted(names)}")
sys.exit(0 if want <= names else f"missing studies: {sorted(want - names)}")
EOF
host_ip=$(docker port "$(ids dashboard)" 8080 | head -1)
[[ "$host_ip" == 127.0.0.1:* ]] || fail "dashboard published on $host_ip, want 127.0.0.1 only"

step "no password in any container's environment or \`docker inspect\`"
for s in db_password worker_db_password dashboard_db_password; do
    pw=$(cat "$WORK/secrets/$s")
    # shellcheck disable=SC2046  # one id per word
    if docker inspect $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT") \
        | grep -qF -- "$pw"; then
        fail "the password in secrets/$s shows in docker inspect"
    fi
done
[ -d "$WORK/secrets/db_password" ] && fail "Docker replaced a secret file with a directory"
say "none of the three passwords shows in docker inspect"

step "no unhandled exception in any rnntune log"
# A kill or a stop must be absorbed (retry, hand back, resume), never crash a process: the
# restart policy is a safety net, and a crash it hides is still a bug.
if dc logs --no-color init worker evaluate dashboard 2>&1 | grep -q "Traceback"; then
    dc logs --no-color init worker evaluate dashboard 2>&1 | grep -B3 -A30 "Traceback" | head -80
    fail "a process crashed with an unhandled exception (above)"
fi

OK=1
