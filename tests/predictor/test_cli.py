from __future__ import annotations

import orjson

from foresight.cli import main


def test_predict_command_in_order_and_clean_errors(small_predictor, tmp_path, capsys):
    model = small_predictor.save(tmp_path / "m.json.gz")
    rows = [{"messages": [{"role": "user", "content": "Write a detailed essay about owls."}], "model": "long-model"},
            {"prompt": "In one word, name a color of owls.", "model": "long-model", "max_tokens": 3},
            {"instruction": "Write a detailed essay about owls.", "generator": "short-model"}]
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["predictor", "predict", "--model", str(model), "--input", str(inp), "--output", str(out)]) == 0
    preds = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(preds) == 3 and set(preds[0]) == {"p50", "p90"}
    assert preds[0]["p50"] > preds[2]["p50"] and preds[1]["p90"] <= 3

    inp.write_text('{"model": "m"}\n')
    assert main(["predictor", "predict", "--model", str(model), "--input", str(inp), "--output", str(out)]) == 2
    assert "row 1" in capsys.readouterr().err
    assert main(["predictor", "predict", "--model", str(tmp_path / "nope"), "--input", str(inp)]) == 2
    assert "not found" in capsys.readouterr().err
