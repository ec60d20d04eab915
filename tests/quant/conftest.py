import pytest


@pytest.fixture(scope="session")
def trained_tiny_scout():
    """(fp32 state_dict, training info, held-out token ids [N]) of tiny-scout trained once per session
    on stdlib docstrings (~20-45 s on 2 CPU cores); kept in memory, never written to the repository."""
    from tests.quant.tiny_trained import HELD_OUT_MODULES, TRAIN_MODULES, TrainSpec, token_stream, train

    state, info = train("tiny-scout", 0, token_stream(TRAIN_MODULES), TrainSpec())
    return state, info, token_stream(HELD_OUT_MODULES)
