"""Writes a generated table into a README between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`
(the benchmark tools' one way of keeping the README's figures produced, never typed)."""

from pathlib import Path


def write_block(readme: str, name: str, table: str) -> None:
    body = Path(readme).read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start not in body or end not in body:
        raise SystemExit(f"{readme} has no {start} block")
    head, rest = body.split(start, 1)
    tmp = Path(readme + ".tmp")
    tmp.write_text(f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}")
    tmp.replace(readme)
