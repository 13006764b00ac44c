#!/usr/bin/env bash
# Refreshes the Swagger UI assets that the admin API embeds and serves at /docs, from the
# npm registry's `swagger-ui-dist` package (nothing is fetched at build or run time).
#
#   scripts/update-swagger-ui.sh            # the version pinned below
#   scripts/update-swagger-ui.sh 5.37.0     # another version (then update the pin)
set -euo pipefail
version="${1:-5.36.0}"
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/crates/tern-admin/assets/swagger-ui"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
mkdir -p "$dest"
for f in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE; do
  cp "$work/package/$f" "$dest/$f"
done
{
  echo "swagger-ui-dist $version (npm registry)"
  (cd "$dest" && sha256sum swagger-ui-bundle.js swagger-ui.css)
} > "$dest/VERSION"
echo "updated $dest to swagger-ui-dist $version"
