#!/bin/bash
# The GPU checks of docs/performance.md ("D2ACE's bookkeeping on the GPU") as one script,
# about 5 minutes on an H200: the CUDA tests, the neighbour search on the device, and
# delicious / yeast fit times with the bookkeeping chosen by the rule (auto) and on the host.
# Needs the MULAN files in $SKD2ACE_DATA (delicious, yeast). Logs go to $OUT (default: .).
# The package is used from this checkout; on a machine without the other dependencies, set
# WHEELS to a folder of their wheels (skorch, liac-arff, iterative-stratification): they are
# installed into /tmp/site first.
export PYTHONUNBUFFERED=1
out=${OUT:-.}
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi -L
python3 -c "import torch, sklearn, numpy, skorch; print(torch.__version__, sklearn.__version__, numpy.__version__, skorch.__version__, torch.cuda.is_available())"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" \
    "$here/../tests/test_device.py" "$here/../tests/test_device_selection.py" \
    "$here/../tests/test_neighbors.py" 2>&1 | tail -n 8 | tee "$out/gpu_tests.txt"
timeout 60 python3 "$here/bench_neighbors.py" --device cuda 2>&1 | tail -n 6 | tee "$out/gpu_knn.txt"
for flag in auto 0; do
  SKD2ACE_DEVICE_SELECTION=$flag timeout 150 python3 "$here/bench_overhead.py" --device cuda \
      --cases yeast delicious --repeats 2 2>&1 | tail -n 8 | tee "$out/gpu_fit_$flag.txt"
done
