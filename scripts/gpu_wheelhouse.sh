#!/usr/bin/env bash
# Builds OUT_DIR: the wheels (CPython 3.12, manylinux x86_64) that a GPU machine WITHOUT network needs, beside the
# packages its image already has (torch, torchvision, numpy, pandas, pyarrow, scipy, opencv-python-headless,
# aiohttp, grpcio, protobuf, requests, ...), to run the project's code: ray 2.60.0 (core, Data, Train, Tune and the
# dashboard server that ray.init(include_dashboard=True) starts), MLflow's tracking client with a local sqlite store
# (mlflow-skinny, not the full `mlflow` wheel with its web UI), albumentations and pydantic.
# It runs where pip reaches the package index, and keeps the folder small (it travels beside the repository):
#   - ray's wheel is repacked without its Java jars, the dashboard web UI's JavaScript, rllib/serve/llm and its
#     vendored copy of aiohttp (the image's aiohttp serves instead); see RAY_DROP below;
#   - native libraries and executables of every wheel are stripped of symbol tables and debug info (`strip`);
#   - wheels are re-zipped at the strongest deflate level; with GPU_WHEELHOUSE_LZMA=1 their native files are stored
#     LZMA-compressed instead (about 8 MiB less; pip, through Python's zipfile, installs such wheels, but other
#     wheel tools may not: off by default).
# The wheel file names are unchanged and each RECORD lists the repacked files with their new hashes.
#
# On the GPU machine (python3 = CPython 3.12):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site OUT_DIR/*.whl \
#     && export PYTHONPATH=/tmp/site
# (Ray's worker processes inherit PYTHONPATH; the console scripts, `ray` among them, land in /tmp/site/bin.)
# `PYTHONPATH=/tmp/site python3 -m pip check` there then reports any requirement that the image's versions miss.
#
# Usage: [GPU_WHEELHOUSE_LZMA=1] scripts/gpu_wheelhouse.sh OUT_DIR   (prints the folder's size; exits 1 above MAX_MIB)
set -euo pipefail

OUT_DIR=${1:?usage: scripts/gpu_wheelhouse.sh OUT_DIR}
MAX_MIB=60  # the repository (about 1 MiB) travels beside it under the device tool's 64 MiB

# Every wheel of the folder, pinned. The GPU image's own packages are not here (see the header).
WHEELS=(
  # Ray; ray[data,train,tune] needs nothing more than the image has, but for these
  ray==2.60.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  referencing==0.37.0
  rpds-py==2026.9.1
  tensorboardX==2.6.5
  # the dashboard: ray.init(include_dashboard=True) fails unless ray.dashboard.optional_deps imports
  aiohttp-cors==0.8.1
  opencensus==0.11.4
  opencensus-context==0.1.3
  google-api-core==2.44.0
  googleapis-common-protos==1.76.0
  proto-plus==1.29.0
  google-auth==2.63.0
  pyasn1==0.6.5
  pyasn1-modules==0.4.2
  opentelemetry-exporter-prometheus==0.66b2
  opentelemetry-api==1.45.2
  opentelemetry-sdk==1.45.2
  opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  importlib-metadata==9.1.0
  # MLflow's client and its sqlite store (sqlalchemy, alembic; the store imports cryptography)
  mlflow-skinny==3.17.2
  sqlalchemy==2.1.9
  alembic==1.20.1
  mako==1.4.3
  cryptography==50.0.2
  cffi==2.1.1
  pycparser==3.12
  databricks-sdk==0.167.0
  cachetools==7.3.3
  fastapi==0.165.0
  starlette==1.10.0
  uvicorn==0.55.0
  gitpython==3.2.1
  gitdb==4.0.12
  smmap==5.0.3
  python-dotenv==1.2.4
  sqlparse==0.6.1
  # pydantic (pydantic-core 2.50.5 needs typing-extensions>=4.16.0)
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  # albumentations
  albumentations==2.0.8
  albucore==0.0.24
  simsimd==6.5.16
  stringzilla==5.3.2
  # timm as requirements.txt pins it (the image has a timm of its own, of a version not known here)
  timm==1.0.31
)

# Paths dropped from ray's wheel (compressed sizes in ray 2.60.0's cp312 wheel), none needed to start a local Ray
# (ray.init, with the dashboard server) and run Ray Data, Train and Tune:
RAY_DROP=(
  ray/jars/                                           # 30.7 MiB: Java workers and the cross-language API
  ray/dashboard/client/build/static/js/               # 2.3 MiB: the dashboard web UI's JavaScript; its server,
  ray/dashboard/client/build/static/media/            #   APIs (jobs, state, metrics) and index.html stay, and
  ray/dashboard/client/build/speedscope-1.5.3/        #   static/css keeps the static folder it requires
  ray/_private/runtime_env/agent/thirdparty_files/    # 2.9 MiB: aiohttp & deps vendored for the runtime-env agent;
                                                      #   without them it imports the image's (as the dashboard does)
  ray/rllib/                                          # 1.6 MiB: RLlib (Tune's lookup of RLlib trainables catches
                                                      #   the ImportError)
  ray/serve/                                          # 0.6 MiB: Serve (the dashboard's Serve API answers 501)
  ray/llm/                                            # 0.3 MiB: Ray LLM (only ray.data.llm imports it)
)

PLATFORM_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

command -v strip >/dev/null || { echo "gpu_wheelhouse: 'strip' (binutils) is missing" >&2; exit 1; }

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

echo "gpu_wheelhouse: downloading ${#WHEELS[@]} wheels" >&2
python3 -m pip download -q --no-deps "${PLATFORM_ARGS[@]}" -d "$STAGE/download" "${WHEELS[@]}"

count=$(find "$STAGE/download" -name '*.whl' | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheelhouse: expected ${#WHEELS[@]} wheels, got $count" >&2
  exit 1
fi

# Repack each wheel into OUT_DIR: RAY_DROP's paths left out of ray's, ELF files stripped, RECORD rewritten.
rm -f "$OUT_DIR"/*.whl
GPU_WHEELHOUSE_LZMA=${GPU_WHEELHOUSE_LZMA:-0} python3 - "$STAGE/download" "$OUT_DIR" "${RAY_DROP[@]}" <<'EOF'
import base64, csv, hashlib, io, os, subprocess, sys, tempfile, zipfile

src_dir, out_dir, ray_drop = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
lzma = os.environ["GPU_WHEELHOUSE_LZMA"] == "1"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def stripped(data: bytes) -> bytes:
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    try:
        subprocess.run(["strip", "--strip-unneeded", f.name], check=True)
        with open(f.name, "rb") as g:
            return g.read()
    finally:
        os.unlink(f.name)


for name in sorted(os.listdir(src_dir)):
    path = os.path.join(src_dir, name)
    drop = ray_drop if name.startswith("ray-") else ()
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        record_name = next(i.filename for i in infos
                           if i.filename.count("/") == 1 and i.filename.endswith(".dist-info/RECORD"))
        contents, changed, dropped, elf = {}, 0, 0, 0
        for info in infos:
            if info.filename == record_name or info.is_dir():
                continue
            if info.filename.startswith(drop):
                dropped += 1
                continue
            data = z.read(info)
            if data[:4] == b"\x7fELF":
                elf += 1
                new = stripped(data)
                if len(new) < len(data):
                    data, changed = new, changed + 1
            contents[info.filename] = (info, data)
        record = list(csv.reader(io.StringIO(z.read(record_name).decode())))
    if not changed and not dropped and not (lzma and elf):
        with open(path, "rb") as f, open(os.path.join(out_dir, name), "wb") as g:
            g.write(f.read())
        continue
    lines = []
    for row in record:
        if not row:
            continue
        file = row[0]
        if file == record_name:
            lines.append([file, "", ""])
        elif file in contents:
            data = contents[file][1]
            lines.append([file, record_hash(data), str(len(data))])
        # else: a dropped file (or a stale entry): its line goes
    listed = {row[0] for row in lines}
    missing = sorted(set(contents) - listed)
    if missing:
        sys.exit(f"gpu_wheelhouse: {name}: files missing from RECORD: {missing[:5]}")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    out = os.path.join(out_dir, name)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as w:
        for file, (info, data) in contents.items():
            new_info = zipfile.ZipInfo(file, info.date_time)
            new_info.external_attr = info.external_attr  # keeps the executables' mode (gcs_server, raylet)
            new_info.create_system = info.create_system
            if lzma and data[:4] == b"\x7fELF":
                w.writestr(new_info, data, zipfile.ZIP_LZMA)
            else:
                w.writestr(new_info, data, zipfile.ZIP_DEFLATED, 9)
        record_info = zipfile.ZipInfo(record_name, (2020, 1, 1, 0, 0, 0))
        record_info.external_attr = 0o644 << 16
        w.writestr(record_info, buf.getvalue(), zipfile.ZIP_DEFLATED, 9)
    with zipfile.ZipFile(out) as w:
        bad = w.testzip()
        if bad:
            sys.exit(f"gpu_wheelhouse: {name}: corrupt member {bad}")
    before, after = os.path.getsize(path), os.path.getsize(out)
    print(f"gpu_wheelhouse: {name}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
          f"({dropped} files dropped, {changed} stripped)", file=sys.stderr)
EOF

echo "gpu_wheelhouse: wheels in $OUT_DIR" >&2
ls -l "$OUT_DIR"/*.whl | awk '{printf "%10d  %s\n", $5, $9}' | sed "s#$OUT_DIR/##" >&2
total=$(cat "$OUT_DIR"/*.whl | wc -c)
total_mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "gpu_wheelhouse: total $total_mib MiB ($total bytes) in $(ls "$OUT_DIR"/*.whl | wc -l) wheels"
if [ "$total" -gt $((MAX_MIB * 1048576)) ]; then
  echo "gpu_wheelhouse: over the limit of $MAX_MIB MiB" >&2
  exit 1
fi
