#!/usr/bin/env bash
# The GPU check: ONE prepared script for the lent GPU, an H100 or H200 (offline, ~15 min of device time in all).
#
#   python benchmarks/prepare_gpu_bundle.py          # here, once: gpu_bundle/ (wheels, eyepacs-dev at 224 px)
#   benchmarks/gpu_check.sh [OUT]                    # there, via the device tool with carry=["gpu_bundle"]
#   benchmarks/gpu_check.sh --dry-run [OUT]          # here, on the CPU at tiny sizes (tests/test_gpu_check.py)
#
# Steps: install the bundled wheels (pip --no-index); print the GPU, the commit and the versions; measure
# model-only and end-to-end images/s (benchmarks/throughput.py, with the projection of the paper's protocol);
# run rotation vs baseline on the bundled eyepacs-dev at 224 px with the honest protocol (folds by patient,
# validation inside the label fraction, the same optimiser-step budget for both arms, FOV mask); report.
# OUT (default: $OUT, else ./gpu_check_out) receives gpu_check.log, throughput.txt, jobs.csv and the sweep's
# report.md, report.csv, report_paired.csv, qwk_vs_fraction.png (7 files: the device returns at most 8).
#
# Sizing for ~8 minutes on an H200 (BUDGET_S=480). Rates are unmeasured; assumed: DenseNet121 at 224 px,
# bf16 + channels_last, batch 32, >= 2,000 images/s end to end for the fine-tune and >= 500 images/s
# (2,000 network inputs/s) for the pretext:
#   set-up + wheels ~20 s; throughput (3 model-only modes incl. ~60 s compile, 2 end-to-end fits) ~150 s
#   pretext: 15 epochs x 1,841 training images / 500 img/s = 55 s, + validation ~5 s
#   fine-tune: 12 jobs (2 arms x fractions 0.05, 0.1, 1.0 x folds 0, 1) x 500 steps x 32 = 192,000 images
#     / 2,000 img/s = 96 s; + 10 validations of <= 330 images and a 409-image test per job, + ~6 s set-up
#     per job -> ~180 s; sweep ~250 s; report ~10 s. Total ~430 s.
# If the GPU is slower, the sweep stops at its share of BUDGET_S and the report names the missing jobs;
# jobs run fold by fold, both arms of a fraction next to each other, so what finished stays paired.
set -uo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-${OUT:-gpu_check_out}}" && cd "${1:-${OUT:-gpu_check_out}}" && pwd)
BUNDLE=${GPU_BUNDLE:-$REPO/gpu_bundle}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
WORK=$(mktemp -d -t gpu-check-XXXXXX)
export SSL_DR_ROOT=$WORK PYTHONUNBUFFERED=1 PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
cd "$REPO" || exit 2
START=$SECONDS
stage() { echo; echo "=== $* ($((SECONDS - START)) s)"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }

check() {  # every step below; main body unindented to keep the lines short
stage "gpu_check $([[ $DRY == 1 ]] && echo '--dry-run ')on ${HOSTNAME:-?}, $(date -u +%FT%TZ)"
if [[ $DRY == 0 ]]; then
  if [[ ! -f $BUNDLE/wheels/requirements.txt ]]; then
    echo "error: $BUNDLE/wheels/requirements.txt missing: run python benchmarks/prepare_gpu_bundle.py here first" \
      "and pass carry=[\"gpu_bundle\"] to the device tool"; exit 2
  fi
  "$PY" -m pip install -q --no-index --find-links "$BUNDLE/wheels" -r "$BUNDLE/wheels/requirements.txt" || {
    echo "pip could not resolve against the machine's packages; installing the wheels alone to /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$BUNDLE"/wheels/*.whl \
      && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
  nvidia-smi || echo "nvidia-smi failed"
fi
echo "commit: $(git rev-parse HEAD 2>/dev/null || echo 'no .git here'); bundle: $(cat "$BUNDLE/COMMIT" 2>/dev/null \
  || echo none)"
"$PY" -c "import sys, torch, lightning, timm, hydra, omegaconf, albumentations, cv2, os
print('python', sys.version.split()[0], '| torch', torch.__version__, '| lightning', lightning.__version__,
      '| timm', timm.__version__, '| hydra', hydra.__version__, '| albumentations', albumentations.__version__,
      '| cuda', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none', '| cpus', os.cpu_count())" \
  || { echo "error: the packages above do not import; see the pip lines above"; exit 2; }

DATA=$BUNDLE/eyepacs-dev
if [[ ! -f $DATA/labels.csv ]]; then
  if [[ $DRY == 0 ]]; then echo "error: $DATA/labels.csv missing: run benchmarks/prepare_gpu_bundle.py"; exit 2; fi
  stage "no bundle at $BUNDLE: generating a few images instead"
  "$PY" benchmarks/prepare_gpu_bundle.py --no-wheels --generate 40 --size 64 --out "$WORK/bundle" || exit 2
  DATA=$WORK/bundle/eyepacs-dev
fi

if [[ $DRY == 1 ]]; then
  THROUGHPUT=(--cpu --model resnet10t --size 32 --batch 4 --n 16 --no-compile --threads 1)
  SIZES=(trainer=cpu model.backbone.name=resnet10t data.image_size=32 data.batch_size=8 pretext.batch_size=4
         pretext.max_epochs=1 trainer.max_steps=4 trainer.val_check_interval=2 model.classifier.freeze_steps=1
         model.classifier.scheduler.warmup_steps=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2
         data.fold=0 data.label_fraction=1.0)
else
  THROUGHPUT=()
  SIZES=(trainer=gpu data.image_size=224 data.batch_size=32 pretext.batch_size=32 pretext.max_epochs=15
         trainer.max_steps=500 trainer.val_check_interval=50 data.fold=0,1 data.label_fraction=1.0,0.1,0.05)
fi

stage "throughput: model only and end to end"
timeout $(( $(left) / 2 )) "$PY" benchmarks/throughput.py --images "$DATA" ${THROUGHPUT[@]+"${THROUGHPUT[@]}"} \
  | tee "$OUT/throughput.txt"
echo "throughput exit status ${PIPESTATUS[0]}"

stage "rotation vs baseline on $DATA, $(( $(left) - 30 )) s left for the sweep"
timeout $(( $(left) - 30 )) "$PY" -m ssl_dr.train -m data=csv "data.root=$DATA" data.source.group_column=patient_id \
  "${SIZES[@]}" arm=rotation,baseline logger=csv sweep_name=gpu_check "hydra.sweep.dir=$WORK/sweep"
SWEEP=$?
echo "sweep exit status $SWEEP"

stage "report"
if [[ $SWEEP != 0 || ! -f $WORK/sweep/report.md ]]; then  # stopped early: report what finished, name the rest
  "$PY" -m ssl_dr.report "$WORK/sweep" > /dev/null; echo "report exit status $? (1: jobs missing, named in report.md)"
fi
for f in report.md report.csv report_paired.csv qwk_vs_fraction.png; do
  [[ -f $WORK/sweep/$f ]] && cp "$WORK/sweep/$f" "$OUT/"
done
"$PY" - "$WORK/sweep" "$OUT/jobs.csv" <<'EOF'
import json, sys
from pathlib import Path
import pandas as pd
keys = ["arm", "label_fraction", "fold", "test/qwk", "val/qwk_best", "test/grades_predicted", "labels/read",
        "train/steps", "best/step", "pretext/val_acc", "pretext/reused", "pretext/seconds", "num_train", "num_test"]
metrics = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*/metrics.json")]
rows = [{k: m.get(k) for k in keys} for m in metrics]
table = pd.DataFrame(rows, columns=keys).sort_values(["fold", "label_fraction", "arm"])
table.to_csv(sys.argv[2], index=False)
print(table.to_string(index=False))
EOF
cat "$OUT/report.md" 2>/dev/null || echo "no report.md: see the sweep's lines above"
stage "done: files in $OUT"
ls -la "$OUT"
[[ -f $OUT/report.md ]]
}

check 2>&1 | tee "$OUT/gpu_check.log"  # a pipe, not exec > >(tee): the log is complete when the script ends
STATUS=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$STATUS"
