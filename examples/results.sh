#!/bin/bash
# The runs behind the results tables of the README (3 seeds, SSR vs LightGCN vs MF-BPR, and the
# SSR ablations on MovieLens-100k). Prints one command per line; run them in any order, e.g.
#   bash examples/results.sh runs/results | xargs -P 2 -d '\n' -n 1 bash -c
# then: python examples/results_table.py runs/results
# Each run trains until validation Recall@20 stops improving (patience 20), one torch thread,
# and ranks every validation and test user (--eval-users 0).
R=${1:-runs/results}
D=${2:-../shared/data}
P="python examples/train_large.py --quiet --threads 1 --eval-users 0"
for s in 1 2 3; do
    for m in ssr lightgcn mf; do
        echo "$P --data $D/movielens-100k --model $m --seed $s --out $R/ml/$m-s$s"
    done
    # On the Amazon sets (ID only) SSR's ID coefficients start from the LightGCN spectral
    # prior, chosen on validation.
    # The same SSR model on the large-graph source (a band store read by rows, sparse ID
    # residual), forced on these graphs: Chebyshev bands as on a large graph, and (MovieLens)
    # the exact bands that --approx auto picks at that size.
    echo "$P --data $D/movielens-100k --model ssr --pipeline stored --approx chebyshev --seed $s --out $R/ml/ssr-stored-s$s"
    echo "$P --data $D/movielens-100k --model ssr --pipeline stored --seed $s --out $R/ml/ssr-stored-exact-s$s"
    for ds in amazon-baby:baby amazon-clothing:clothing; do
        echo "$P --data $D/${ds%%:*} --model ssr --id-prior lightgcn --seed $s --out $R/${ds##*:}/ssr-s$s"
        echo "$P --data $D/${ds%%:*} --model ssr --id-prior lightgcn --pipeline stored --approx chebyshev --seed $s --out $R/${ds##*:}/ssr-stored-s$s"
        for m in lightgcn mf; do
            echo "$P --data $D/${ds%%:*} --model $m --seed $s --out $R/${ds##*:}/$m-s$s"
        done
    done
done
for a in "nomask --no-mask" "nocons --lambda-mask 0" "cp --fusion cp" "cpsum --fusion cp+sum" \
         "noalign --no-align" "uniform --band-edges uniform" "M1 --n-bands 1" "M2 --n-bands 2" \
         "M3 --n-bands 3" "M6 --n-bands 6"; do
    set -- $a; name=$1; shift
    echo "$P --data $D/movielens-100k --model ssr --seed 1 --out $R/ml/abl-$name-s1 $*"
done
