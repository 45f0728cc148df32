import pytest

from tests.support.requires import need


def test_a_missing_extra_fails_loudly_naming_the_extra():
    with pytest.raises(ImportError, match="'integrations' extra.*fail rather than skip"):
        need("truecost_no_such_module_xyz", "integrations")
    assert need("json").dumps([1]) == "[1]"
