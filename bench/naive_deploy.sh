#!/usr/bin/env bash
# The naive way to deploy a push, as a script a user might write instead of Release Pipeline:
# shallow clone, docker build, remove the old container, run the new one, poll until served.
#   naive_deploy.sh CLONE_URL BRANCH CONTAINER_NAME HOST_PORT LABEL EXPECTED_VERSION
set -euo pipefail
clone_url=$1 branch=$2 name=$3 port=$4 label=$5 version=$6

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { echo "step $1 $EPOCHREALTIME" >&2; }  # when each step ended, for the bench's notes

git clone --quiet --depth 1 --branch "$branch" "$clone_url" "$work/src"
step clone
image="$name:$(git -C "$work/src" rev-parse --short=12 HEAD)"
docker build --quiet --label "$label" --tag "$image" "$work/src" >/dev/null
step build
docker rm --force "$name" >/dev/null 2>&1 || true
docker run --detach --name "$name" --label "$label" --publish "127.0.0.1:$port:8080" \
  --env PORT=8080 "$image" >/dev/null
step run

for _ in $(seq 600); do
  [ "$(curl --fail --silent --max-time 2 "http://127.0.0.1:$port/version" 2>/dev/null)" = "$version" ] && { step served; exit 0; }
  sleep 0.1
done
echo "naive deploy: $version not served within 60 s" >&2
exit 1
