"""Compile contracts/sol/*.sol with the pinned npm solc and write contracts/artifacts/*.json.

Usage::

    npm ci                                   # installs solc (package.json pins the version)
    python -m refute.contracts.build         # rewrite the artifacts
    python -m refute.contracts.build --check # exit 1 if the committed artifacts are stale

The compiler is the npm package ``solc`` at ``SOLC_VERSION`` driven through its standard-JSON
interface by ``contracts/solc_compile.js``. Every source is passed inline, the settings are
fixed here, and the artifacts are JSON with sorted keys, so a build is a pure function of the
sources and the compiler: the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from refute.contracts.errors import ContractBuildError, StaleArtifactsError

SOLC_VERSION = "0.8.37"
EVM_VERSION = "prague"  # py-evm's newest fork; anvil runs Prague bytecode unchanged
OPTIMIZER_RUNS = 200

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_DIR = PACKAGE_DIR / "sol"
ARTIFACT_DIR = PACKAGE_DIR / "artifacts"
REPO_ROOT = PACKAGE_DIR.parent
COMPILE_JS = PACKAGE_DIR / "solc_compile.js"

SETTINGS: dict[str, Any] = {
    "evmVersion": EVM_VERSION,
    "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


def compiler_input() -> dict[str, Any]:
    """The standard-JSON input: every .sol file under sol/, inline, keyed by file name."""
    sources = {
        path.name: {"content": path.read_text(encoding="utf-8")}
        for path in sorted(SOURCE_DIR.glob("*.sol"))
    }
    if not sources:
        raise ContractBuildError(f"no Solidity sources under {SOURCE_DIR}")
    return {"language": "Solidity", "sources": sources, "settings": SETTINGS}


def run_solc(standard_input: dict[str, Any]) -> dict[str, Any]:
    """Run the pinned npm solc on a standard-JSON input and return its output."""
    node = shutil.which("node")
    if node is None:
        raise ContractBuildError("node is not on PATH; the build needs node and `npm ci`")
    if not (REPO_ROOT / "node_modules" / "solc").is_dir():
        raise ContractBuildError(f"solc is not installed: run `npm ci` in {REPO_ROOT}")
    proc = subprocess.run(
        [node, str(COMPILE_JS), SOLC_VERSION],
        input=json.dumps(standard_input).encode(),
        capture_output=True,
        cwd=REPO_ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise ContractBuildError(f"solc failed: {proc.stderr.decode(errors='replace').strip()}")
    output: dict[str, Any] = json.loads(proc.stdout)
    problems = output.get("errors", [])
    errors = [p for p in problems if p.get("severity") == "error"]
    if errors:
        text = "\n".join(p.get("formattedMessage", p.get("message", "")) for p in errors)
        raise ContractBuildError(f"compilation failed:\n{text}")
    warnings = [p for p in problems if p.get("severity") == "warning"]
    for w in warnings:
        print(w.get("formattedMessage", w.get("message", "")), file=sys.stderr)
    return output


def artifacts_from(output: dict[str, Any]) -> dict[str, str]:
    """Artifact file name -> file text, one per contract or library."""
    files: dict[str, str] = {}
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        for name, data in sorted(contracts.items()):
            artifact = {
                "contractName": name,
                "sourceName": source_name,
                "abi": data["abi"],
                "bytecode": "0x" + data["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                "compiler": {"name": "solc", "version": SOLC_VERSION, "settings": SETTINGS},
            }
            file_name = f"{name}.json"
            if file_name in files:
                raise ContractBuildError(f"two contracts are named {name}")
            files[file_name] = json.dumps(artifact, sort_keys=True, indent=1) + "\n"
    return files


def build() -> dict[str, str]:
    """Compile the sources and return the artifact files (not written)."""
    return artifacts_from(run_solc(compiler_input()))


def stale_files(files: dict[str, str]) -> list[str]:
    """Names of artifact files that are missing, different, or no longer produced."""
    on_disk = {p.name for p in ARTIFACT_DIR.glob("*.json")}
    stale = [
        name
        for name, text in files.items()
        if not (ARTIFACT_DIR / name).is_file()
        or (ARTIFACT_DIR / name).read_text(encoding="utf-8") != text
    ]
    stale += sorted(on_disk - files.keys())
    return sorted(stale)


def write(files: dict[str, str]) -> None:
    """Replace the artifact directory's JSON files by `files`."""
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    for path in ARTIFACT_DIR.glob("*.json"):
        if path.name not in files:
            path.unlink()
    for name, text in files.items():
        (ARTIFACT_DIR / name).write_text(text, encoding="utf-8")


def check() -> None:
    """Raise StaleArtifactsError unless the committed artifacts equal a fresh build."""
    stale = stale_files(build())
    if stale:
        raise StaleArtifactsError(
            "contract artifacts are stale (" + ", ".join(stale) + "): run "
            "`python -m refute.contracts.build` and commit contracts/artifacts/"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refute.contracts.build", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed artifacts are stale"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            check()
            print(f"contract artifacts are up to date (solc {SOLC_VERSION})")
        else:
            files = build()
            write(files)
            print(f"wrote {len(files)} artifacts to {ARTIFACT_DIR} (solc {SOLC_VERSION})")
    except ContractBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
