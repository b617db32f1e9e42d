#!/bin/bash
# Record CIFAR-10 settings on a lent GPU (the workplace's `device` tool), in one call.
#
#   bash benchmarks/gpu_record.sh prepare       # here, once: wheels into .whl/, data and repo into .devdata/
#   device run: BUDGET=560 bash benchmarks/gpu_record.sh run cifar:cifar10-airbench \
#       cifar-lt:cifar10-lt-airbench:01_training,02_canaries,03_gradient_influence,04_membership_inference
#               (carry [".whl", ".devdata"], timeout_s 600)
#
# Why: the device image has PyTorch but not the chapters' packages (papermill, jupytext, myst-nb,
# ipykernel), nothing there can be downloaded, and a call carries at most 64 MiB. The CIFAR-10 JPEGs
# travel as one tar.xz (18.6 MB: a solid archive stores the 60,000 files' identical JPEG headers
# once; the zips in ../shared/data are 65 MB). `run` records the settings in order, each only if the
# last one's wall time still fits in BUDGET seconds, and puts each recorded folder, its log and the
# runs' histories under $OUT. On 2026-12-04 the cifar profile's chapter 01 alone took 509 s on an
# H200 (BENCHMARKS.md), so one 10-minute call records at most one setting at that engine speed.
set -u

prepare() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n' >> .git/info/exclude
    grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || printf '/.devdata/\n' >> .git/info/exclude
    mkdir -p .whl .devdata
    local packages="" p v
    for p in papermill jupytext myst-nb ipykernel ipython ipython-pygments-lexers opacus nbclient nbformat \
             jupyter_client jupyter_core traitlets tornado pyzmq comm debugpy matplotlib-inline docutils \
             entrypoints fastjsonschema jsonschema jsonschema-specifications referencing rpds-py linkify-it-py \
             mdit-py-plugins platformdirs tenacity jedi parso prompt_toolkit wcwidth pexpect ptyprocess \
             stack_data asttokens executing pure_eval; do
        v=$(.venv/bin/pip show "$p" 2>/dev/null | awk '/^Version/{print $2}')
        [ -n "$v" ] && packages="$packages $p==$v"
    done
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $packages || exit 1
    [ -d data/cifar10-jpeg/train ] || { echo "unzip ../shared/data/cifar10-jpeg-*.zip into data/cifar10-jpeg first"; exit 1; }
    tar cf - -C data cifar10-jpeg | xz -6 -T0 > .devdata/cifar.tar.xz
    git bundle create .devdata/repo.bundle HEAD
    du -sh .whl .devdata
}

run() {
    export PYTHONUNBUFFERED=1
    local start budget took=0 spec profile name s rc
    start=$(date +%s); budget=${BUDGET:-560}
    left() { echo $(( budget - ($(date +%s) - start) )); }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
    if ! git rev-parse HEAD >/dev/null 2>&1; then   # the copy came without .git: provenance needs the commit
        git init -q && git fetch -q .devdata/repo.bundle HEAD && git reset -q FETCH_HEAD
    fi
    echo "commit $(git rev-parse HEAD), $(git status --porcelain --untracked-files=no | wc -l) tracked files changed"
    mkdir -p data && xz -dc .devdata/cifar.tar.xz | tar xf - -C data
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    export BNPRIVACY_RESULTS=/tmp/results
    for spec in "$@"; do
        # profile:name or profile:name:chapters (comma-separated, as record's --chapters)
        IFS=: read -r profile name chapters <<< "$spec"
        if [ "$took" -gt 0 ] && [ "$(left)" -lt $(( took + 15 )) ]; then echo "skip $name: $(left) s left, the last took $took s"; continue; fi
        s=$(date +%s)
        timeout $(( $(left) - 10 )) python3 -m bnprivacy record --profile "$profile" --name "$name" \
            ${chapters:+--chapters "$chapters"} -p dataset imagefolder:data/cifar10-jpeg > "$OUT/$name.log" 2>&1
        rc=$?; took=$(( $(date +%s) - s )); echo "$name: rc $rc in $took s"
        tar czf "$OUT/$name.tgz" "recorded/$name" 2>/dev/null
    done
    find /tmp/results/runs /tmp/results/validation \( -name '*.json' -o -name history.csv \) -print0 2>/dev/null \
        | tar czf "$OUT/runs-meta.tgz" --null -T - 2>/dev/null
    echo "done in $(( $(date +%s) - start )) s"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 prepare | run PROFILE:NAME ..."; exit 2 ;;
esac
