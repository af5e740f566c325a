#!/bin/sh
# A shell worker: prints a numbered tick every TICK seconds (default 1)
# until stopped. drover gives it DROVER_GROUP and DROVER_INDEX; SIGTERM
# ends it with one line, once its sleep is gone (a sleep still exiting when
# the shell exits would make drover warn about a leftover process).
trap 'kill $! 2>/dev/null; wait 2>/dev/null; echo "tick $n: got SIGTERM, bye"; exit 0' TERM
n=0
while :; do
    n=$((n + 1))
    echo "tick $n from $DROVER_GROUP[$DROVER_INDEX] (pid $$)"
    # In the background so that the trap runs as soon as SIGTERM arrives;
    # wait's stderr is dropped because dash reports the sleep that the
    # group's SIGTERM killed there ("Terminated"), which is not news.
    sleep "${TICK:-1}" &
    wait $! 2>/dev/null
done
