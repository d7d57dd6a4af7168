"""position_ids / token_type_ids of shape (1, seq) or (seq,) broadcast over the batch, as in
transformers."""

import pytest
import torch

from bertfast import BertModel
from tests.helpers import max_abs_error, random_hf_bert

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("which", ["position_ids", "token_type_ids", "both"])
@pytest.mark.parametrize("form", ["(1, seq)", "(seq,)"])
def test_one_row_ids_broadcast_as_transformers(tmp_path, which, form):
    path, hf = random_hf_bert(tmp_path)
    ours = BertModel.from_pretrained(path, backend="torch")
    ids = torch.randint(1, 99, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    row = {"position_ids": torch.randperm(9) + 3, "token_type_ids": torch.randint(0, 2, (9,))}
    names = ["position_ids", "token_type_ids"] if which == "both" else [which]
    extra = {n: row[n].unsqueeze(0) if form == "(1, seq)" else row[n] for n in names}
    # transformers takes (1, seq); (seq,) alone is ours (its position_ids path cannot)
    one_row = {n: row[n].unsqueeze(0) for n in names}
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, **one_row).last_hidden_state
    got = ours(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
    assert max_abs_error(got, expected, mask) < 1e-5
