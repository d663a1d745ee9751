#!/usr/bin/env bash
# GPU check of volt's kernels and models, run by the lead on a CUDA machine (fresh copy of the repo, python3 with
# a CUDA build of torch, ninja, pytest, hypothesis; no venv needed). Steps, each with a time limit, all within a
# 570 s budget (GPU_CHECK_BUDGET; about 2.5 minutes on an H100; the most important first, so a run cut short still
# reports them):
#   1. card name (nvidia-smi), torch/CUDA versions;
#   2. build the extension with the CUDA kernels (VOLT_FORCE_CUDA=1, MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0);
#   3. the ops tests (tests/test_ops_*.py; their CUDA parity cases run because a GPU is visible);
#   4. the model tests (attention backends, Volt incl. the tokenizer/detokenizer, both SpUNet teacher backends);
#   5. tools/bench_model.py --device cuda (ours vs the reference's tokenizer; the detokenizer's dense path too);
#   6. tools/bench.py ops --device cuda; 7. tools/bench_train_step.py --device cuda (Volt-S bf16, MFU).
# Optional carried inputs in .gpu/ (ignored by git; the device tool's `carry`), used when present:
#   .gpu/fixtures/*.pt     -> VOLT_FIXTURES (the parity fixtures; ../shared does not travel);
#   .gpu/site.tar.xz       -> unpacked to /tmp/volt_site on PYTHONPATH (spconv-cu126 + cumm + pccm, repacked
#                             with xz because the spconv wheel alone is over the 64 MiB transfer limit).
# A failing step is reported and the script goes on (a failed build skips the steps that need it).
# Log: printed, and also written to "$OUT/gpu_check.log" when OUT is set. Exit status: 0 only if every step
# passed. Usage: bash tools/gpu_check.sh   (PYTHON=... to choose the interpreter)
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" VOLT_FORCE_CUDA=1
export VOLT_REQUIRE_EXT=0 PYTHONUNBUFFERED=1
# Seen on the lent H200 image: CXX=/opt/gcc/bin/g++ links libstdc++ so that any C++ exception thrown by the
# extension (a TORCH_CHECK on bad input) kills the process with SIGSEGV; the system g++ works. Prefer it.
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && exec > >(tee "$OUT/gpu_check.log") 2>&1; fi
if [ -d .gpu/fixtures ]; then export VOLT_FIXTURES="$PWD/.gpu/fixtures"; fi
if [ -f .gpu/site.tar.xz ]; then
  mkdir -p /tmp/volt_site && tar -xJf .gpu/site.tar.xz -C /tmp/volt_site \
    && export PYTHONPATH="/tmp/volt_site${PYTHONPATH:+:$PYTHONPATH}"
fi

FAILED=()
# The whole script stays inside BUDGET seconds (the device tool kills a command at 600 s, which would cut the
# log short): each step's limit is capped by what is left, and a step with under 10 s left is skipped.
BUDGET="${GPU_CHECK_BUDGET:-570}"
# run NAME LIMIT_SECONDS CMD...: runs CMD with a time limit, tees its output to the log, records failure.
run() {
  local name="$1" limit="$2" left=$((BUDGET - SECONDS))
  shift 2
  if [ "$left" -lt 10 ]; then
    echo "!!! ${name} skipped: ${left}s left of the ${BUDGET}s budget"
    FAILED+=("${name} (skipped: budget)")
    return 124
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== ${name} (limit ${limit}s): $* ==="
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1
  local rc=$?
  echo "=== ${name}: exit ${rc} after $((SECONDS - start))s ==="
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "!!! ${name} timed out after ${limit}s"
    FAILED+=("${name} (exit ${rc})")
  fi
  return "$rc"
}

run gpu 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
run versions 60 "$PY" -c "import torch, sys, importlib.util as u; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'fixtures', \
'${VOLT_FIXTURES:-none}'); print('spconv', u.find_spec('spconv') and __import__('spconv').__version__)"
if run build 200 "$PY" setup.py build_ext --inplace; then
  run ext_info 30 "$PY" -c "import json, volt.ops as o; i = o.ext_info(); print(json.dumps(i, indent=1)); \
assert i['extension_loaded'] and 'cuda' in i['kernels'].get('voxelize', []) and 'cuda' in i['kernels'].get('patchify', []), \
'the CUDA kernels of voxelize/patchify are not registered'"
  run tests 100 "$PY" -m pytest -q -ra -p no:cacheprovider tests/test_ops_*.py
else
  echo "!!! build failed: skipping ext_info and tests (the benchmark still runs, on the reference)"
fi
run model_tests 120 "$PY" -m pytest -q -ra -p no:cacheprovider tests/test_attention.py tests/test_volt.py \
  tests/test_sparse_unet.py
run bench_model 120 "$PY" tools/bench_model.py --device cuda
run bench 90 "$PY" tools/bench.py ops --device cuda
run bench_train_step 90 "$PY" tools/bench_train_step.py --device cuda

echo
if [ "${#FAILED[@]}" -eq 0 ]; then
  echo "gpu_check: all steps passed"
  exit 0
fi
echo "gpu_check: FAILED steps: ${FAILED[*]}"
exit 1
