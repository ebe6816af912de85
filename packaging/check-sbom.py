"""Checks the software bundle's SBOM (make bundle): valid CycloneDX 1.5 by
the strict JSON schema, and naming what an assessor looks for first: the
ONNX Runtime wheel with its pinned SHA-256, the crates of the three
binaries with theirs, and the Debian dependencies.

    check-sbom.py SBOM.json WHEEL_SHA256
"""

import json
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def main() -> int:
    path, wheel_sha256 = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    if errors:
        print(f"check-sbom: {path} is not valid CycloneDX 1.5: {errors}", file=sys.stderr)
        return 1
    components = json.loads(text)["components"]
    by_purl = {c["purl"].split("@")[0].split("?")[0]: c for c in components}
    problems = []
    wheel = by_purl.get("pkg:pypi/onnxruntime")
    if not wheel or wheel["hashes"][0]["content"] != wheel_sha256:
        problems.append(f"no onnxruntime wheel with SHA-256 {wheel_sha256}")
    for crate in ("deepseekd", "deepseek-audit", "deepseek-integrity", "ort", "tokio"):
        if f"pkg:cargo/{crate}" not in by_purl:
            problems.append(f"no crate {crate}")
    hashed = [c for c in components if c["purl"].startswith("pkg:cargo/") and c.get("hashes")]
    if len(hashed) < 100:
        problems.append(f"only {len(hashed)} crates with a registry SHA-256")
    if "pkg:deb/debian/libc6" not in by_purl:
        problems.append("no Debian dependency libc6")
    if problems:
        print(f"check-sbom: {path}: " + "; ".join(problems), file=sys.stderr)
        return 1
    debs = sum(c["purl"].startswith("pkg:deb/") for c in components)
    print(
        f"check-sbom: {path}: valid CycloneDX 1.5; {len(components)} components: "
        f"{len(hashed)} crates with their SHA-256, the onnxruntime wheel, {debs} Debian packages"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
