#!/bin/sh
# A shell worker: prints a numbered tick every second until stopped.
# drover gives it DROVER_GROUP and DROVER_INDEX; SIGTERM ends it.
trap 'echo "tick $n: got SIGTERM, bye"; exit 0' TERM
n=0
while :; do
    n=$((n + 1))
    echo "tick $n from $DROVER_GROUP[$DROVER_INDEX] (pid $$)"
    sleep 1 &
    wait $!
done
