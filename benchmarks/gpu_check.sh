#!/usr/bin/env bash
# The GPU check, in one call on a bare GPU machine (a plain checkout, nothing pip-installed,
# no network; python3 with torch, triton and pytest):
#
#   bash benchmarks/gpu_check.sh OUT             on a CUDA machine, at most 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run OUT   the same steps without a GPU (CI runs it)
#
# In order, so that a run cut short keeps the most important part:
#   1. the GPU tests: every test marked gpu under tests/ (kernels compiled for the GPU,
#      fastlstm.LSTM(backend="triton") parity with nn.LSTM on CUDA, and whatever GPU-only
#      test is added later); dry run: a small selection under Triton's CPU interpreter,
#      then the same command, whose tests all skip without CUDA;
#   2. the kernel benchmark: every pinned Triton design against cuDNN nn.LSTM,
#      `fastlstm bench --shapes gpu` over tf32, bfloat16, float32 (TF32 off) and float16,
#      forward and forward+backward; dry run: the tiny `gpu-dry` grid under the interpreter;
#   3. the design table: benchmarks/design_table.py turns the benchmark into the table
#      backend="auto" reads (kernels/measured.json's format; a developer merges it);
#   4. one epoch of the IMDB classifier (exercise and default presets), backend aten
#      (cuDNN) against triton, when an archive was carried along (data/*.tar.gz or
#      $FASTLSTM_IMDB_PATH); dry run: a tiny synthetic corpus when none is given.
# Writes 8 files into OUT (at most 8 come back from the GPU machine): environment.txt,
# tests.log, bench/results.{md,json}, bench/speedup.png, design_table.json, train.json and
# summary.md (what ran, how long, exit codes, the design table as Markdown). The
# benchmark's results.csv is deleted: it is the JSON's rows, one line each.
# Every step runs under `timeout -s INT` (pytest and the benchmark then still write what
# they have). Exit status: non-zero when any step failed or was cut short.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
if [ "${1:-}" = "--dry-run" ]; then
    dry=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh [--dry-run] OUT" >&2
    exit 2
fi
mkdir -p "$1/bench" || exit 2
out="$(cd "$1" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Seconds: the whole check, and the most each step may take of what is left. The caller's
# timeout must leave room beyond total_s for the last step's kill (timeout -k 20) and the
# summary: 480 s here, a 540 s timeout for the command.
total_s=480
tests_s=150
bench_s=270
table_s=30
deadline=$((SECONDS + total_s))
status=0
last_rc=0
summary_rows=()

# The providers the design table needs: cuDNN, every pinned design, and the control (an
# identical cuDNN copy: reads 1.00x unless the harness is biased).
providers="nn.LSTM-padded,nn.LSTM-control"
providers+=",fastlstm-triton-persistent,fastlstm-triton-step,fastlstm-triton-batch"
# tf32 first: fp32's default on a GPU, and the precision a cut-short run should keep.
dtypes=tf32,bfloat16,float32,float16
if [ "$dry" -eq 1 ]; then
    export TRITON_INTERPRET=1
    device=cpu
    shapes=gpu-dry
    timing=(--repeats 1 --warmup 0 --budget 0 --threads 1 --compile-workers 2 --no-memory)
else
    # The kernels must be compiled for the GPU, not run by the interpreter.
    unset TRITON_INTERPRET
    device=cuda
    shapes=gpu
    # The benchmark's cost, estimated (no GPU has run it yet; the first run's summary.md
    # gives the real seconds). The grid: 16 shapes (T=256, B 1..1024, H 64..512) x 4
    # precisions = 64 cases, 5 providers, 2 modes. A step of a T=256 LSTM takes about
    # 10-50 us, so one forward call takes t = 2.6-13 ms and one forward+backward about 3t,
    # 8-40 ms (the batch design at B=1024, H=512 perhaps 100 ms). Each timed call follows
    # 5 ms (at least one call) of settle calls, so a round costs about max(5 ms, t) + t per
    # provider; --budget 0.1 stops a (case, mode) once 0.1 s x 5 providers are spent and 5
    # rounds ran, --repeats 15 at most. Forward: 0.5-0.65 s; forward+backward: 0.55-2 s;
    # plus the check, warmup and memory pass (3 forward+backward and 1 forward call per
    # provider): 0.1-0.8 s. So 1.2 s (calls fast) to 3.5 s (every call slow) per case:
    # 75-220 s for the grid.
    # Compiling: every (design, precision, hidden size, batch tile) is its own binary, some
    # 200-300 kernels at very roughly 1 s each, minutes on one core; --compile-workers 12
    # compiles them on 12 of the 16 cores first (fastlstm/bench/precompile.py), about
    # 30-60 s with the workers' start. The step's cap, 270 s, keeps what finished: the
    # table is saved after every case, tf32 first.
    timing=(--repeats 15 --warmup 1 --budget 0.1 --compile-workers 12)
fi

# budget CAP: seconds a step may run (CAP, or less when the deadline is nearer).
budget() {
    local left=$((deadline - SECONDS))
    if [ "$left" -lt "$1" ]; then echo $((left > 1 ? left : 1)); else echo "$1"; fi
}

# step NAME CAP LOG COMMAND...: run under a timeout, append output to LOG, record the row.
step() {
    local name=$1 cap=$2 log=$3 start=$SECONDS rc
    shift 3
    local limit
    limit=$(budget "$cap")
    echo "gpu_check: $name (at most ${limit} s)"
    timeout -s INT -k 20 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local note=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note="cut short after ${limit} s"
    elif [ "$rc" -ne 0 ]; then
        note="failed"
    fi
    [ "$rc" -ne 0 ] && status=1
    last_rc=$rc
    summary_rows+=("| $name | $note | $rc | $((SECONDS - start)) |")
    echo "gpu_check: $name: $note (rc $rc, $((SECONDS - start)) s)"
    return 0
}

# 0. Environment: GPU, driver, versions, commit, date.
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "mode: $([ "$dry" -eq 1 ] && echo "dry run (CPU, Triton interpreter)" || echo GPU)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)")"
    echo "host: $(uname -srm)"
    if command -v nvidia-smi >/dev/null; then
        timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
            --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
} >"$out/environment.txt"
step environment 60 "$out/environment.txt" python3 - <<'EOF'
import platform
import torch
import triton
import fastlstm

print("python:", platform.python_version())
print("torch:", torch.__version__, "| CUDA:", torch.version.cuda)
print("cudnn:", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
print("triton:", triton.__version__)
print("fastlstm:", fastlstm.__version__, "from", fastlstm.__file__)
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print("gpu:", props.name, f"(sm_{props.major}{props.minor}, {props.total_memory >> 20} MiB)")
else:
    print("gpu: none visible to torch")
EOF
if [ "$dry" -eq 0 ] && ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: torch sees no CUDA device; nothing to check (use --dry-run)" >&2
    summary_rows+=("| cuda | torch sees no CUDA device | 1 | 0 |")
    status=1
else
    # 1. GPU tests (dry run: a small interpreter selection, then the GPU command itself,
    #    whose tests all skip without CUDA: it proves they import from a plain checkout).
    if [ "$dry" -eq 1 ]; then
        step "tests (interpreter selection)" "$tests_s" "$out/tests.log" \
            python3 -m pytest -p no:cacheprovider -q -rA tests/kernels/test_lstm.py \
            tests/test_module.py -k "(interp and bidirectional) or (triton and bidir)"
    fi
    # Every test marked gpu under tests/; a module that fails to import fails the step
    # without keeping the other modules' GPU tests from running.
    step "tests (pytest -m gpu tests)" "$tests_s" "$out/tests.log" \
        python3 -m pytest -p no:cacheprovider -q -rA -m gpu --continue-on-collection-errors \
        tests

    # 2. The kernel benchmark: every pinned design against cuDNN nn.LSTM, `fastlstm bench`.
    step "benchmark (fastlstm bench --shapes $shapes)" "$bench_s" "$out/bench/bench.log" \
        python3 -m fastlstm bench --shapes "$shapes" --device "$device" --dtype "$dtypes" \
        --providers "$providers" "${timing[@]}" --out "$out/bench"
    # The table and JSON keep the figures; the log's end goes into the summary on failure.
    if [ "$last_rc" -ne 0 ]; then
        tail -n 15 "$out/bench/bench.log" >"$work/bench.log"
    fi
    # Eight files come back: the CSV (the JSON's rows, one line each) makes room for the
    # design table.
    rm -f "$out/bench/bench.log" "$out/bench/results.csv"

    # 3. The design table, from whatever the benchmark saved (it saves after every case).
    step "design table (benchmarks/design_table.py)" "$table_s" "$work/table.md" \
        python3 benchmarks/design_table.py "$out/bench/results.json" \
        --out "$out/design_table.json"

    # 4. The IMDB classifier, one epoch per preset and backend, in the time that is left.
    data="${FASTLSTM_IMDB_PATH:-}"
    if [ -z "$data" ]; then
        for candidate in data/aclImdb_v1_labeled.tar.gz data/*.tar.gz data/aclImdb; do
            if [ -e "$candidate" ]; then
                data="$candidate"
                break
            fi
        done
    fi
    train_args=()
    if [ -z "$data" ] && [ "$dry" -eq 1 ]; then
        data="$(python3 -c "import sys; from fastlstm.data.synthetic import write_synthetic_imdb
print(write_synthetic_imdb(sys.argv[1], n_per_class=12, max_len=16))" "$work/corpus")"
        train_args=(--threads 1)
    fi
    runs=()
    if [ -z "$data" ]; then
        summary_rows+=("| train | skipped: no IMDB archive carried (data/*.tar.gz) | - | 0 |")
    else
        for preset in exercise default; do
            for backend in aten triton; do
                run="$work/runs/$preset-$backend"
                runs+=("$preset" "$backend" "$run")
                step "train --preset $preset --backend $backend" 600 "$work/train.log" \
                    python3 -m fastlstm train --data "$data" --preset "$preset" \
                    --backend "$backend" --epochs 1 --device "$device" --no-test \
                    --no-progress --cache-dir "$work/cache" --out "$run" "${train_args[@]}"
            done
        done
    fi
    python3 - "$out/train.json" "$data" "$work/train.log" "${runs[@]}" <<'EOF'
import json
import sys
from pathlib import Path

path, data, log, *runs = sys.argv[1:]
records = []
for preset, backend, run in zip(runs[0::3], runs[1::3], runs[2::3]):
    record = {"preset": preset, "backend": backend}
    metrics = Path(run) / "metrics.json"
    if metrics.exists():
        found = json.loads(metrics.read_text())
        epoch = found["history"][0] if found.get("history") else {}
        record.update(
            epoch_seconds=epoch.get("train_seconds"),
            eval_seconds=epoch.get("eval_seconds"),
            val_accuracy=epoch.get("val_accuracy"),
            total_seconds=found.get("result", {}).get("seconds"),
        )
    else:
        record["error"] = "no metrics.json (the run failed or was cut short; see log_tail)"
    records.append(record)
tail = Path(log).read_text().splitlines()[-30:] if Path(log).exists() else []
summary = {"data": data or None, "runs": records, "log_tail": tail}
Path(path).write_text(json.dumps(summary, indent=1) + "\n")
EOF
fi

# Summary: every step's outcome, the training figures, and the benchmark's exit reason.
{
    echo "# GPU check $([ "$dry" -eq 1 ] && echo "(dry run)")"
    echo
    echo "Command: \`bash benchmarks/gpu_check.sh $([ "$dry" -eq 1 ] && echo "--dry-run ")OUT\`;"
    echo "$(grep -E '^(date_utc|commit):' "$out/environment.txt" | tr '\n' ' ')"
    echo
    echo "| step | outcome | exit code | seconds |"
    echo "|---|---|---:|---:|"
    printf '%s\n' "${summary_rows[@]}"
    if [ -f "$out/train.json" ]; then
        echo
        python3 - "$out/train.json" <<'EOF'
import json
import sys

found = json.load(open(sys.argv[1]))
print(f"Training: one epoch on {found['data']}.\n")
print("| preset | backend | epoch s | eval s | val accuracy |")
print("|---|---|---:|---:|---:|")
for r in found["runs"]:
    def cell(key, fmt="{:.1f}"):
        return "-" if r.get(key) is None else fmt.format(r[key])
    print(f"| {r['preset']} | {r['backend']} | {cell('epoch_seconds')} | "
          f"{cell('eval_seconds')} | {cell('val_accuracy', '{:.2%}')} |")
EOF
    fi
    if [ -s "$work/table.md" ]; then
        echo
        cat "$work/table.md"
    fi
    if [ -s "$work/bench.log" ]; then
        echo
        echo "The benchmark's last lines:"
        echo
        echo '```text'
        cat "$work/bench.log"
        echo '```'
    fi
    echo
    echo "Total: $SECONDS s."
} >"$out/summary.md"
cat "$out/summary.md"
exit "$status"
