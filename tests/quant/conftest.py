import pytest


@pytest.fixture(scope="session")
def trained_tiny_scout():
    """(fp32 state_dict, training info, held-out token ids [N]) of the tiny Llama 4 of tiny_trained.py,
    trained once per session on stdlib docstrings (~36 s on 2 idle CPU cores); kept in memory, never
    written to the repository."""
    from tests.quant.tiny_trained import HELD_OUT_MODULES, TRAIN_MODULES, token_stream, train

    state, info = train(0, token_stream(TRAIN_MODULES))
    return state, info, token_stream(HELD_OUT_MODULES)
