#!/bin/bash
# Figures 4 and 5 of the large-graph issue, on synthetic graphs (CPU):
#   distributed — 2 gloo processes (torchrun) against 1 process: band stores and metrics;
#   resume      — SIGKILL and SIGTERM mid-run, then --resume: metrics identical to a straight run.
# Usage: bash bench/large_checks.sh [WORKDIR]   (about 4 minutes on 2 cores)
set -u
R=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-$(mktemp -d)}
PY=${PYTHON:-python}
CLI="$PY $R/examples/train_large.py --approx chebyshev --quiet"
mkdir -p "$W" && cd "$W" || exit 1
echo "== distributed: 2 processes vs 1 (synthetic 20000,10000,300000, 3 epochs)"
S=20000,10000,300000
$PY -m torch.distributed.run --nproc_per_node=2 --master_port=29531 $R/examples/train_large.py \
    --approx chebyshev --quiet --distributed --synthetic $S --out two --fresh --epochs 3 || exit 1
$CLI --synthetic $S --out one --fresh --epochs 3 --threads 1 || exit 1
$PY $R/bench/compare_runs.py one two
echo "== resume after SIGKILL / SIGTERM (synthetic 60000,30000,1200000, 3 epochs)"
RUN="$CLI --synthetic 60000,30000,1200000 --epochs 3 --threads 1 --eval-users 10000"
rm -rf straight killed termed
$RUN --out straight > straight.log 2>&1 || { tail straight.log; exit 1; }
for kind in killed termed; do
    $RUN --out $kind > $kind.log 2>&1 &
    pid=$!
    while [ ! -f $kind/checkpoint.pt ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
    sleep 8                                    # into the second epoch
    if [ $kind = killed ]; then kill -KILL $pid; else kill -TERM $pid; fi
    wait $pid; echo "$kind: exit status $?"
    $PY -c "import torch; s = torch.load('$kind/checkpoint.pt', weights_only=True); \
print('$kind: checkpoint after epoch', s['epoch'], 'step', s['step'])"
    $RUN --out $kind --resume > $kind.resume.log 2>&1; echo "$kind: resumed, exit status $?"
    $PY $R/bench/compare_runs.py straight $kind | grep -v "^bands"
done
