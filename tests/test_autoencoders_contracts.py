"""Every registered autoencoder family passes every contract of tests/helpers/autoencoder_contracts.py."""

import pytest
from helpers.autoencoder_contracts import CONTRACTS

from latenttracer.autoencoders import FAMILIES


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("family", FAMILIES.names())
def test_family_contract(family, contract, tmp_path):
    contract(FAMILIES.get(family), tmp_path)
