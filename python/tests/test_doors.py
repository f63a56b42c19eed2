"""The Python door of the request layer: every row of the shared option table
(fixtures/requests/caption-options.json, which the CLI, the server and the browser tests read too)
raises InputError naming its keyword argument (``top_p: ...``), and every good row gives the CLI's
tokens for the same options."""

from __future__ import annotations

import json

import blip_onnx
import pytest

from conftest import ROOT, cli_json

TABLE = json.loads((ROOT / "fixtures" / "requests" / "caption-options.json").read_text())


@pytest.mark.parametrize("row", TABLE["bad"], ids=lambda r: json.dumps(r["options"]))
def test_bad_options_name_their_keyword(models, images, row):
    with pytest.raises(blip_onnx.InputError) as err:
        models["caption"].caption(images[:1], **row["options"])
    assert str(err.value).startswith(row["field"] + ":"), str(err.value)


def _flags(options):
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        else:
            out.append(f"{flag}={value}")
    return out


@pytest.mark.parametrize("options", TABLE["good"], ids=json.dumps)
def test_good_options_give_the_clis_tokens(models, packages, images, options):
    got = models["caption"].caption(images[:1], **options)[0]
    want = cli_json("caption", "-p", packages["caption"], *_flags(options), images[0])[0]
    assert got.tokens == want["tokens"], options
    assert got.text == want["caption"]
