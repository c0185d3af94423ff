"""Fails if what a kustomization applies carries a placeholder secret.

Usage: placeholders.py RENDERED.yaml | KUSTOMIZATION_DIR...

A rendered file (kubectl kustomize output) is scanned as it is. A directory is resolved without
kubectl: its kustomization's `resources:` (files, and directories resolved the same way) are
scanned. Exit 1 naming each file and line that carries one of the placeholders every ChatSphere
binary refuses, so no overlay can deploy a publicly known SECRET_KEY.
"""
import os
import re
import sys

PLACEHOLDER = re.compile(r"replace-with|replace-me|change-me|changeme|placeholder", re.I)


def resources(directory):
    path = os.path.join(directory, "kustomization.yaml")
    listed, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if re.match(r"^resources:\s*$", line):
                inside = True
            elif inside and re.match(r"^\s+-\s+", line):
                listed.append(re.sub(r"^\s+-\s+", "", line).split("#")[0].strip())
            elif inside and line.strip() and not line.startswith(" "):
                inside = False
    for item in listed:
        target = os.path.normpath(os.path.join(directory, item))
        if os.path.isdir(target):
            yield from resources(target)
        else:
            yield target


def scan(path):
    found = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.lstrip().startswith("#"):
                continue
            if PLACEHOLDER.search(line):
                found.append(f"{path}:{n}: {line.strip()}")
    return found


def main(args):
    files = []
    for arg in args:
        files.extend(resources(arg) if os.path.isdir(arg) else [arg])
    found = [hit for f in files for hit in scan(f)]
    for hit in found:
        print(f"placeholder secret in an applied manifest: {hit}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
