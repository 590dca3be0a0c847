#!/usr/bin/env bash
# packages.sh prints the import paths of the Go packages in every module of the workspace
# (go.work), one per line, so that go build, vet, test and staticcheck can be given them all at
# once. A module with no packages yet contributes nothing instead of failing the command.
#
#   hack/packages.sh          every package
#   hack/packages.sh --build  packages with non-test Go files (what go build accepts)
#   hack/packages.sh --main   main packages (commands)
#   hack/packages.sh --dirs   the module directories, relative to the repository root
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

mapfile -t mods < <(go list -m -f '{{.Dir}}')
rel=()
for d in "${mods[@]}"; do
	rel+=("${d#"$root"/}")
done

format='{{.ImportPath}}'
case ${1:-} in
"") ;;
--build) format='{{if or .GoFiles .CgoFiles}}{{.ImportPath}}{{end}}' ;;
--main) format='{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ;;
--dirs)
	printf '%s\n' "${rel[@]}"
	exit 0
	;;
*)
	echo "usage: $0 [--build|--main|--dirs]" >&2
	exit 2
	;;
esac

patterns=()
for d in "${rel[@]}"; do
	patterns+=("./$d/...")
done

# -e lists packages that do not compile too, so that the command given them reports the error.
# The one warning filtered out is go's note that a module has no packages yet.
go list -e -f "$format" "${patterns[@]}" 2> >(grep -v 'matched no packages' >&2) | sed '/^$/d'
