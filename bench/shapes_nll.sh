#!/usr/bin/env bash
# NLL in bits/dim on held-out shapes (seed 1, 64 images) for one L_simple network under three
# reverse variances, and for a network trained with L_hybrid and a learned variance.
# Needs runs/shapes (README's demo) and runs/shapes-hybrid:
#   ddpmkit run examples/shapes.toml --set output.name='"shapes-hybrid"' \
#       --set variance.type='"learned-range"' --set train.vlb_weight=0.001
set -euo pipefail
cd "$(dirname "$0")/.."
held_out=(--set eval.num_examples=64 --set eval.batch_size=64 --set eval.data.type='"shapes"'
          --set eval.data.image_size=16 --set eval.data.seed=1 --set eval.data.num_examples=64)
for variance in fixed-large fixed-small analytic; do
    # Analytic-DPM estimates Gamma_t from 64 training images
    extra=(--set variance.type="\"$variance\"")
    [ "$variance" = analytic ] && extra+=(--set variance.num_examples=64)
    ddpmkit eval examples/shapes.toml --quiet --run runs/shapes "${held_out[@]}" "${extra[@]}"
    cp runs/shapes/eval.json "runs/shapes/eval-$variance.json"
    cp runs/shapes/vlb_terms.png "runs/shapes/vlb_terms-$variance.png"
done
ddpmkit eval examples/shapes.toml --quiet --run runs/shapes-hybrid "${held_out[@]}" \
    --set variance.type='"learned-range"' --set train.vlb_weight=0.001
python - <<'PY'
import json
rows = [("L_simple, sigma^2 = beta (fixed large)", "runs/shapes/eval-fixed-large.json"),
        ("L_simple, sigma^2 = beta~ (fixed small)", "runs/shapes/eval-fixed-small.json"),
        ("L_simple, Analytic-DPM (no retraining)", "runs/shapes/eval-analytic.json"),
        ("L_hybrid, learned range (Nichol & Dhariwal)", "runs/shapes-hybrid/eval.json")]
print("| network and reverse variance | NLL bound (bits/dim) | standard error | L_0 | L_T |")
print("|---|---|---|---|---|")
for name, path in rows:
    r = json.load(open(path))
    t = r["terms_bits_per_dim"]
    print(f"| {name} | {r['nll_bits_per_dim']:.3f} | {r['nll_standard_error']:.3f} "
          f"| {t[0]:.3f} | {r['prior_bits_per_dim']:.1e} |")
PY
