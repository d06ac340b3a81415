#!/usr/bin/env bash
# Refresh the dashboard's vendored front-end libraries from the npm registry (npm's own default,
# through the ordinary `npm pack`), and record what was taken in VENDORED.md beside them.
#   scripts/refresh-dashboard-vendor.sh [HTMX_VERSION] [UPLOT_VERSION]
# Review the diff (the licence files, the versions, the checksums) before committing.
set -euo pipefail
HTMX=${1:-2.0.11}
UPLOT=${2:-1.6.32}
cd "$(dirname "$0")/.."
dest=src/meterline/api/dashboard/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "htmx.org@$HTMX" "uplot@$UPLOT" >/dev/null)
for pkg in "htmx.org-$HTMX" "uplot-$UPLOT"; do
  mkdir -p "$work/$pkg" && tar xzf "$work/$pkg.tgz" -C "$work/$pkg"
done
mkdir -p "$dest/htmx" "$dest/uplot"
cp "$work/htmx.org-$HTMX/package/dist/htmx.min.js" "$dest/htmx/"
cp "$work/htmx.org-$HTMX/package/LICENSE" "$dest/htmx/LICENSE"
cp "$work/uplot-$UPLOT/package/dist/uPlot.iife.min.js" "$work/uplot-$UPLOT/package/dist/uPlot.min.css" "$dest/uplot/"
cp "$work/uplot-$UPLOT/package/LICENSE" "$dest/uplot/LICENSE"
{
  echo "# Vendored front-end libraries of the dashboard"
  echo
  echo "Refreshed by \`scripts/refresh-dashboard-vendor.sh\` (npm pack of the released packages; the"
  echo "files are copied unchanged from each package's \`dist/\`). Served from \`/ui/static/vendor/\`."
  echo
  echo "| library | npm package@version | licence | tarball integrity (npm) |"
  echo "|---|---|---|---|"
  echo "| htmx | htmx.org@$HTMX | 0BSD (\`htmx/LICENSE\`) | $(cd "$work" && npm view "htmx.org@$HTMX" dist.integrity) |"
  echo "| uPlot | uplot@$UPLOT | MIT (\`uplot/LICENSE\`) | $(cd "$work" && npm view "uplot@$UPLOT" dist.integrity) |"
  echo
  echo "SHA-256 of the files as vendored:"
  echo
  echo '```'
  (cd "$dest" && sha256sum htmx/* uplot/*)
  echo '```'
} > "$dest/VENDORED.md"
echo "vendored htmx.org@$HTMX and uplot@$UPLOT into $dest"
