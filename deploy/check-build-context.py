#!/usr/bin/env python3
"""Proves that deploy/Dockerfile's build stage compiles from what it copies, without a Docker engine.

Reads the build stage of the Dockerfile (the stage whose RUN calls `cargo build`), copies exactly the
sources its COPY instructions name into an empty temporary directory, leaving out what the
Dockerfile's ignore file (BuildKit's per-Dockerfile `<Dockerfile>.dockerignore`, else the context's
`.dockerignore`) keeps out of the build context, and runs the stage's RUN command there.

  deploy/check-build-context.py                 # the RUN command as written (a release build)
  deploy/check-build-context.py --check         # the same command with `cargo build` replaced by
                                                # `cargo check`: same flags, same context, so a file
                                                # the manifest or the code needs but the image
                                                # lacks fails the same way, in a fraction of the time
  deploy/check-build-context.py --check --target-dir DIR   # cargo's output kept in DIR between runs
  deploy/check-build-context.py --check --dev --target-dir target
                                                # the dev profile instead of `--release`, in the
                                                # target directory the tests' build filled: only
                                                # the crate itself is checked again

Only the Dockerfile syntax this project uses is understood (FROM, WORKDIR, COPY of context paths,
RUN with cache mounts and `&&`-joined commands); anything else fails loudly rather than being
checked wrongly.
"""

import argparse
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class Unsupported(Exception):
    """Dockerfile or ignore-file syntax this script does not understand."""


# ---------------------------------------------------------------------------------------------
# The ignore file (moby's patternmatcher rules, as BuildKit applies them to the context).


def read_ignore_file(path):
    """The patterns of a .dockerignore file, normalised as BuildKit does: `#` lines are comments,
    blank lines are skipped, a leading `!` marks an exception, patterns are cleaned and made
    relative to the context root."""
    patterns = []
    text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        exception = pattern.startswith("!")
        if exception:
            pattern = pattern[1:].strip()
            if not pattern:
                raise Unsupported(f"{path}:{number}: a lone `!` is not a pattern")
        if any(c in pattern for c in "[]\\"):
            raise Unsupported(
                f"{path}:{number}: character classes and escapes are not supported: {line!r}"
            )
        pattern = posixpath.normpath(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
        patterns.append((exception, compile_pattern(pattern), line.strip()))
    return patterns


def compile_pattern(pattern):
    """A pattern as a regular expression over slash-separated context paths: `*` and `?` stay
    within one path component, `**` spans any number of them (`**/` included)."""
    regex = "^"
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if c == "*":
            regex += "[^/]*"
        elif c == "?":
            regex += "[^/]"
        else:
            regex += re.escape(c)
        i += 1
    return re.compile(regex + "$")


def is_excluded(patterns, path):
    """Whether the context path (slash-separated, relative) is kept out of the build context: the
    last pattern that matches the path or one of its parent directories decides."""
    parents = path.split("/")[:-1]
    excluded = False
    for exception, regex, _ in patterns:
        # An exclusion only matters for a path still included, an exception for one excluded.
        if exception != excluded:
            continue
        match = bool(regex.match(path)) or any(
            regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if match:
            excluded = not exception
    return excluded


# ---------------------------------------------------------------------------------------------
# The Dockerfile.


def instructions(dockerfile):
    """(line number, keyword, arguments) for each instruction, continuation lines joined."""
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    result = []
    current, start = None, 0
    in_directives = True
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if in_directives:
            directive = re.match(r"#\s*([a-zA-Z]+)\s*=\s*(.*)$", stripped)
            if directive:
                if directive.group(1).lower() == "escape" and directive.group(2) != "\\":
                    raise Unsupported(f"{dockerfile}:{number}: only the default escape `\\` is supported")
                continue
            in_directives = False
        if stripped.startswith("#") or (current is None and not stripped):
            continue
        if current is None:
            current, start = "", number
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.strip().partition(" ")
        if "<<" in args:
            raise Unsupported(f"{dockerfile}:{start}: heredocs are not supported")
        result.append((start, keyword.upper(), args.strip()))
        current = None
    if current is not None:
        raise Unsupported(f"{dockerfile}: the last instruction ends with a continuation")
    return result


def split_flags(args):
    """Leading `--name=value` flags and the rest of an instruction's arguments."""
    flags = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        flags.append(flag)
        args = args.lstrip()
    return flags, args


def build_stage(dockerfile):
    """The instructions of the one stage whose RUN calls `cargo build`."""
    stages = []
    for number, keyword, args in instructions(dockerfile):
        if keyword == "FROM":
            stages.append([])
        elif not stages:
            raise Unsupported(f"{dockerfile}:{number}: {keyword} before the first FROM")
        stages[-1].append((number, keyword, args))
    builds = [
        stage
        for stage in stages
        if any(k == "RUN" and re.search(r"\bcargo\s+build\b", a) for _, k, a in stage)
    ]
    if len(builds) != 1:
        raise Unsupported(f"{dockerfile}: expected one stage running `cargo build`, found {len(builds)}")
    return builds[0]


def no_variables(dockerfile, number, text):
    if "$" in text:
        raise Unsupported(f"{dockerfile}:{number}: variables are not supported: {text!r}")


def container_path(workdir, path):
    return posixpath.normpath(posixpath.join(workdir, path))


def copy_sources(context, patterns, ignore_name, dockerfile, number, sources, dest, root, workdir):
    """Copies what a COPY instruction copies from the context into `root` (the image's filesystem)."""
    if len(sources) > 1 and not dest.endswith("/"):
        raise Unsupported(f"{dockerfile}:{number}: COPY of several sources needs a destination ending in /")
    target = container_path(workdir, dest)
    copied = 0
    for source in sources:
        if any(c in source for c in "*?["):
            raise Unsupported(f"{dockerfile}:{number}: wildcards in COPY sources are not supported")
        relative = posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."
        if relative == ".." or relative.startswith("../"):
            raise Unsupported(f"{dockerfile}:{number}: {source} is outside the build context")
        path = context / relative
        if path.is_dir() and not path.is_symlink():
            files = []
            for directory, _, names in os.walk(path):
                for name in names:
                    file = Path(directory, name)
                    rel = file.relative_to(context).as_posix()
                    if not is_excluded(patterns, rel):
                        files.append((file, file.relative_to(path)))
            if not files and (relative == "." or is_excluded(patterns, relative)):
                raise SystemExit(
                    f"{dockerfile}:{number}: COPY {source}: nothing of it is in the build context "
                    f"(left out by {ignore_name})"
                )
            for file, inner in files:
                destination = root / target.lstrip("/") / inner
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, destination, follow_symlinks=False)
                copied += 1
        elif path.exists() or path.is_symlink():
            if is_excluded(patterns, relative):
                raise SystemExit(
                    f"{dockerfile}:{number}: COPY {source}: not in the build context "
                    f"(left out by {ignore_name})"
                )
            into = dest.endswith("/") or (root / target.lstrip("/")).is_dir()
            name = posixpath.join(target, path.name) if into else target
            destination = root / name.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination, follow_symlinks=False)
            copied += 1
        else:
            raise SystemExit(f"{dockerfile}:{number}: COPY {source}: no such file in the context")
    return copied


def shell_segments(dockerfile, number, command):
    """The `&&`-joined simple commands of a RUN instruction, as argument lists."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments = [[]]
    for token in lexer:
        if token == "&&":
            segments.append([])
        elif token and all(c in "();<>|&" for c in token):
            raise Unsupported(f"{dockerfile}:{number}: shell operator {token!r} is not supported")
        else:
            segments[-1].append(token)
    if any(not s for s in segments):
        raise Unsupported(f"{dockerfile}:{number}: empty command in RUN")
    return segments


def main():
    repository = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="run `cargo check` instead of `cargo build`")
    parser.add_argument("--dockerfile", type=Path, default=repository / "deploy" / "Dockerfile")
    parser.add_argument("--context", type=Path, default=repository, help="the build context")
    parser.add_argument(
        "--target-dir",
        type=Path,
        help="cargo's target directory (the image's cache mount), kept between runs; "
        "default: a temporary one",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="with --check and --target-dir: check in the dev profile (the command's `--release` "
        "left out), reusing the dependencies a test or lint build left in the target directory; "
        "the context is copied to a fixed directory in it, so its crate's output is replaced, "
        "not added to, on every run",
    )
    options = parser.parse_args()
    if options.dev and not (options.check and options.target_dir):
        parser.error("--dev needs --check and --target-dir")
    dockerfile = options.dockerfile.resolve()
    context = options.context.resolve()

    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not ignore_file.exists():
        ignore_file = context / ".dockerignore"
    patterns = read_ignore_file(ignore_file) if ignore_file.exists() else []
    ignore_name = ignore_file.name

    with tempfile.TemporaryDirectory(prefix="gatehouse-build-context-") as scratch:
        root = Path(scratch, "root")
        target_dir = (options.target_dir or Path(scratch, "target")).resolve()
        target_dir.mkdir(parents=True, exist_ok=True)
        if options.dev:
            # The crate's output is named after its path: the same path every run.
            root = target_dir / "build-context-source"
            shutil.rmtree(root, ignore_errors=True)
        workdir = "/"
        runs = []
        for number, keyword, args in build_stage(dockerfile):
            if keyword == "FROM":
                continue
            if keyword == "WORKDIR":
                no_variables(dockerfile, number, args)
                workdir = container_path(workdir, args)
            elif keyword == "COPY":
                no_variables(dockerfile, number, args)
                flags, args = split_flags(args)
                for flag in flags:
                    if not re.match(r"--(chown|chmod|link)(=|$)", flag):
                        raise Unsupported(f"{dockerfile}:{number}: COPY {flag} is not supported")
                words = json.loads(args) if args.startswith("[") else shlex.split(args)
                if len(words) < 2:
                    raise Unsupported(f"{dockerfile}:{number}: COPY needs a source and a destination")
                count = copy_sources(
                    context, patterns, ignore_name, dockerfile, number, words[:-1], words[-1], root, workdir
                )
                print(f"COPY {' '.join(words)}: {count} file(s)")
            elif keyword == "RUN":
                flags, command = split_flags(args)
                for flag in flags:
                    if not re.match(r"--(mount|network|security)=", flag):
                        raise Unsupported(f"{dockerfile}:{number}: RUN {flag} is not supported")
                if command.startswith("["):
                    raise Unsupported(f"{dockerfile}:{number}: exec-form RUN is not supported")
                no_variables(dockerfile, number, command)
                runs.append((number, workdir, shell_segments(dockerfile, number, command)))
            else:
                raise Unsupported(f"{dockerfile}:{number}: {keyword} in the build stage is not supported")

        environment = dict(os.environ)
        # The image runs cargo with its default target directory, a cache mount; here that is
        # `--target-dir`, reachable as target/ too for the commands that follow cargo's.
        environment["CARGO_TARGET_DIR"] = str(target_dir)
        # The context leaves rust-toolchain.toml out (the image pins its toolchain with FROM): use
        # the toolchain the repository pins rather than whatever rustup's default is.
        if "RUSTUP_TOOLCHAIN" not in environment and shutil.which("rustup"):
            active = subprocess.run(
                ["rustup", "show", "active-toolchain"],
                cwd=repository,
                capture_output=True,
                text=True,
            )
            if active.returncode == 0 and active.stdout.split():
                environment["RUSTUP_TOOLCHAIN"] = active.stdout.split()[0]

        replaced = False
        for number, workdir, segments in runs:
            cwd = root / workdir.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
            if not (cwd / "target").exists():
                (cwd / "target").symlink_to(target_dir)
            for segment in segments:
                if segment[0] == "cargo":
                    if any(word.startswith("--target-dir") for word in segment):
                        raise Unsupported(f"{dockerfile}:{number}: cargo --target-dir is not supported")
                    if options.check and len(segment) > 1 and segment[1] == "build":
                        flags = [w for w in segment[2:] if not (options.dev and w == "--release")]
                        segment = ["cargo", "check", *flags]
                        replaced = True
                elif options.check:
                    print(f"skipped (needs what `cargo build` builds): {shlex.join(segment)}")
                    continue
                else:
                    # Paths in the image's filesystem land under the scratch root, not the host's.
                    segment = [
                        str(root / word.lstrip("/")) if word.startswith("/") else word
                        for word in segment
                    ]
                print(f"RUN {shlex.join(segment)}", flush=True)
                result = subprocess.run(segment, cwd=cwd, env=environment)
                if result.returncode != 0:
                    print(
                        f"{dockerfile}:{number}: `{shlex.join(segment)}` failed in the build context "
                        f"(exit status {result.returncode})",
                        file=sys.stderr,
                    )
                    return 1
        if options.check and not replaced:
            raise Unsupported(f"{dockerfile}: no `cargo build` to replace with `cargo check`")
        if options.target_dir and not options.dev:
            # The copied context's path differs on every run, and so do this crate's artifacts:
            # drop them, keeping the dependencies' for the next run.
            subprocess.run(
                ["cargo", "clean", "--quiet", "--release", "--package", "gatehouse"],
                cwd=root / runs[-1][1].lstrip("/"),
                env=environment,
            )
    print(f"the build context of {dockerfile.name} builds ({'check' if options.check else 'build'})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Unsupported as error:
        sys.exit(f"unsupported: {error}")
