#!/usr/bin/env bash
# Start Podman's Docker-compatible API on unix:///run/revex-podman.sock and import the image
# the docker backend uses by default, localhost/revex-py:1: a minimal rootfs made of this
# host's python3, its stdlib, the shell tools the backend runs (sh, bash, timeout) and their
# shared libraries. No registry is needed. Idempotent. Needs root, podman and runc (Debian:
# apt-get install -y podman runc; crun refuses the hybrid cgroup layout of these machines).
set -euo pipefail
SOCK=${REVEX_PODMAN_SOCK:-/run/revex-podman.sock}
IMAGE=${REVEX_DOCKER_IMAGE:-localhost/revex-py:1}

if ! grep -qs 'runtime *= *"runc"' /etc/containers/containers.conf; then
  mkdir -p /etc/containers
  printf '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' \
    >> /etc/containers/containers.conf
fi

if ! podman image exists "$IMAGE"; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  py=$(readlink -f /usr/bin/python3)
  stdlib=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  bins="$py /bin/sh /bin/bash /usr/bin/timeout /usr/bin/env"
  mkdir -p "$root"/{usr/bin,bin,tmp,workspace,input,revex-io,etc}
  for b in $bins; do cp -L "$b" "$root$b"; done
  ln -sf "$py" "$root/usr/bin/python3"
  mkdir -p "$root$(dirname "$stdlib")" && cp -a "$stdlib" "$root$stdlib"
  rm -rf "$root$stdlib"/{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3} "$root$stdlib"/__pycache__
  for lib in $( (for b in $bins "$root$stdlib"/lib-dynload/*.so; do ldd "$b" 2>/dev/null; done) \
               | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  chmod 1777 "$root/tmp"  # Podman copies the image's /tmp mode onto the tmpfs (mode= is ignored)
  echo 'nobody:x:65534:65534:nobody:/tmp:/bin/sh' > "$root/etc/passwd"
  echo 'nogroup:x:65534:' > "$root/etc/group"
  tar -C "$root" -cf "$root.tar" .
  podman import "$root.tar" "$IMAGE" --change 'CMD ["/bin/sh"]' >/dev/null
  rm -f "$root.tar"
fi

# A service left running from a directory that has since been deleted (an earlier checkout
# that started it) answers _ping but cannot start a container: conmon fails with "Failed to
# get working directory" and runc with "write child: broken pipe". Stop such a service.
for pid in $(pgrep -f "podman system service .*unix://$SOCK" || true); do
  if readlink "/proc/$pid/cwd" 2>/dev/null | grep -q ' (deleted)$'; then
    echo "podman API: restarting the service (its working directory was deleted)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$SOCK"
  fi
done

if ! curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  # from /, which no checkout can take away
  (cd / && nohup podman system service --time=0 "unix://$SOCK" \
     >/tmp/revex-podman-service.log 2>&1 &)
  for _ in $(seq 1 50); do
    curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
echo "podman API: unix://$SOCK  image: $IMAGE"
