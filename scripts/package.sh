#!/usr/bin/env bash
# Builds crashwatch's Debian package with dpkg's own tools (dpkg-deb, dpkg-shlibdeps), so no
# packaging tool has to be installed beyond dpkg-dev.
#
#   scripts/package.sh [--binary PATH] [--out-dir DIR]
#
#   --binary PATH   package this crashwatch binary (the tests package their debug build);
#                   default: `cargo build --release --locked` and target/release/crashwatch
#   --out-dir DIR   where the .deb goes (default: target/debian)
#   --revision N    the Debian revision (default 1): a rebuild of the same source as an upgrade
#
# Prints the .deb's path as the last line on stdout. The package:
#   /usr/bin/crashwatch                         stripped, as dh_strip would
#   /lib/systemd/system/crashwatch.service      packaging/crashwatch.service
#   /usr/lib/sysusers.d/crashwatch.conf         the service's system user
#   /etc/crashwatch/crashwatch.toml             the configuration, a conffile, 0640 (the postinst
#                                               gives it group crashwatch: it may hold secrets)
#   /etc/logrotate.d/crashwatch                 monthly archives of the event record, a conffile
#   /usr/share/crashwatch/{alerts,dashboards}/  Prometheus rules and their tests, Grafana dashboard
#   /usr/share/man/man1/crashwatch*.1.gz        rendered by the binary from its own --help
#   /usr/share/doc/crashwatch/                  copyright, changelog.Debian.gz
#   /usr/share/lintian/overrides/crashwatch     the tags that do not apply, and why
# and the maintainer scripts in packaging/debian/. The version is Cargo.toml's, with Debian
# revision --revision (1); Depends comes from dpkg-shlibdeps. Maintainer: $DEBFULLNAME <$DEBEMAIL>, as dch
# takes it. Two builds of the same source and binary give the same bytes: every date is
# $SOURCE_DATE_EPOCH, by default the time of the last commit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGE=crashwatch
UNIT=crashwatch.service

die() {
  printf 'package.sh: %s\n' "$*" >&2
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

binary="" out_dir="$REPO/target/debian" revision=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary)
      binary=${2:?--binary needs a path}
      shift 2
      ;;
    --out-dir)
      out_dir=${2:?--out-dir needs a directory}
      shift 2
      ;;
    --revision)
      revision=${2:?--revision needs a number}
      [[ $revision =~ ^[1-9][0-9]*$ ]] || die "--revision $revision is not a positive number"
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
  have "$tool" || die "needs $tool (Debian packages dpkg-dev, binutils, gzip)"
done

if [ -z "$binary" ]; then
  (cd "$REPO" && cargo build --release --locked) >&2
  binary=${CARGO_TARGET_DIR:-$REPO/target}/release/crashwatch
fi
[ -x "$binary" ] || die "$binary is not an executable"

# The version in [package] of Cargo.toml; the binary must say the same, or it is a stale build.
version=$(awk -F'"' '/^\[/ { in_package = ($0 == "[package]") } in_package && /^version *=/ { print $2; exit }' \
  "$REPO/Cargo.toml")
[ -n "$version" ] || die "no version in $REPO/Cargo.toml"
binary_version=$("$binary" --version)
[ "$binary_version" = "crashwatch $version" ] ||
  die "$binary says \"$binary_version\", Cargo.toml says $version: rebuild it"
# A SemVer pre-release (1.0.0-rc.1) sorts before its release, which in Debian takes a tilde.
debian_version=${version/-/\~}-$revision
arch=$(dpkg --print-architecture)

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
maintainer="${DEBFULLNAME:-crashwatch developers} <${DEBEMAIL:-crashwatch@example.org}>"

umask 022
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps expects a source tree: debian/control, and the package's files in debian/<name>.
mkdir -p "$work/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PACKAGE" "$PACKAGE" >"$work/debian/control"
root=$work/debian/$PACKAGE

install -D -m 0755 "$binary" "$root/usr/bin/crashwatch"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/crashwatch"
install -D -m 0644 "$REPO/packaging/crashwatch.service" "$root/lib/systemd/system/$UNIT"
install -D -m 0644 "$REPO/packaging/crashwatch.sysusers.conf" "$root/usr/lib/sysusers.d/crashwatch.conf"
install -D -m 0640 "$REPO/packaging/crashwatch.toml" "$root/etc/crashwatch/crashwatch.toml"
install -D -m 0644 "$REPO/packaging/crashwatch.logrotate" "$root/etc/logrotate.d/crashwatch"
install -D -m 0644 -t "$root/usr/share/crashwatch/alerts" \
  "$REPO/alerts/crashwatch.rules.yml" "$REPO/alerts/crashwatch.tests.yml" \
  "$REPO/alerts/alertmanager.example.yml"
install -D -m 0644 -t "$root/usr/share/crashwatch/dashboards" "$REPO/dashboards/crashwatch.json"

# The unit must start what this package installs, with the configuration it installs.
exec_start=$(sed -n 's/^ExecStart=//p' "$root/lib/systemd/system/$UNIT")
case "$exec_start" in
  "/usr/bin/crashwatch run "*"--config /etc/crashwatch/crashwatch.toml"*) ;;
  *) die "packaging/$UNIT: ExecStart=$exec_start does not run /usr/bin/crashwatch with /etc/crashwatch/crashwatch.toml" ;;
esac

mkdir -p "$work/man" "$root/usr/share/man/man1"
"$binary" man --out-dir "$work/man" --date "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" >/dev/null
for page in "$work/man"/*.1; do
  gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done

doc=$root/usr/share/doc/$PACKAGE
install -D -m 0644 "$REPO/packaging/debian/copyright" "$doc/copyright"
install -D -m 0644 "$REPO/packaging/debian/lintian-overrides" "$root/usr/share/lintian/overrides/$PACKAGE"
{
  printf '%s (%s) unstable; urgency=medium\n\n' "$PACKAGE" "$debian_version"
  printf '  * crashwatch %s.\n\n' "$version"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"

# ------------------------------------------------------------------------------------ DEBIAN/
mkdir -p "$root/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "$REPO/packaging/debian/$script" "$root/DEBIAN/$script"
done
# Everything under /etc is configuration the operator may edit: dpkg keeps their changes.
(cd "$root" && find etc -type f -printf '/%p\n' | LC_ALL=C sort) >"$root/DEBIAN/conffiles"
# As dh_md5sums: conffiles are left out, dpkg records their sums itself.
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
  LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"

depends=$(cd "$work" && dpkg-shlibdeps -O -e"$root/usr/bin/crashwatch" |
  sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies of $binary"
installed_size=$(du -s -k --apparent-size --exclude=DEBIAN "$root" | cut -f1)
{
  printf 'Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: %s\nInstalled-Size: %s\nDepends: %s\n' \
    "$PACKAGE" "$debian_version" "$arch" "$maintainer" "$installed_size" "$depends"
  grep -v '^Package:' "$REPO/packaging/debian/control"
} >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

# Same bytes from the same source: no file is newer than the source's date.
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out_dir"
deb="$out_dir/${PACKAGE}_${debian_version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >&2
echo "$deb"
