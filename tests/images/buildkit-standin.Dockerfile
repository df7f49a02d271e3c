# A local stand-in for BuildKit's images (moby/buildkit:v0.32.2 and -rootless), so scripts/images can build bkrun's Dockerfiles with no registry.
# Its parts come in as named contexts (scripts/images): `debian-rootfs` is the tree scripts/rootfs
# makes (Debian with runc, rootlesskit, uidmap with file capabilities, user 1000 and its
# subordinate ids), `buildkit-binaries` the pinned buildkitd and buildctl scripts/setup installed.
# Each target copies the parts of its image's config that pods depend on: user, environment,
# volume, entrypoint.

FROM debian-rootfs AS privileged
COPY --from=buildkit-binaries buildkitd buildctl /usr/bin/
VOLUME /var/lib/buildkit
ENTRYPOINT ["buildkitd"]

FROM debian-rootfs AS rootless
COPY --from=buildkit-binaries buildkitd buildctl /usr/bin/
# Numeric, as in BuildKit's image, so runAsNonRoot can check it.
USER 1000:1000
ENV HOME=/home/user \
    USER=user \
    XDG_RUNTIME_DIR=/run/user/1000 \
    TMPDIR=/home/user/.local/tmp \
    BUILDKIT_HOST=unix:///run/user/1000/buildkit/buildkitd.sock
VOLUME /home/user/.local/share/buildkit
ENTRYPOINT ["rootlesskit", "buildkitd"]
