"""The rendered_json filter: the data a template lookup rendered as JSON, on every ansible-core the
collection supports (2.17 and 2.18 hand the lookup's JSON text on already turned into data)."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.guestmemfs.liveupdate.plugins.filter.rendered_json import rendered_json


def test_json_text_is_parsed():
    assert rendered_json('[{"host": "h1", "vm": null, "preservable": true}]\n') == \
        [{"host": "h1", "vm": None, "preservable": True}]


def test_data_an_older_ansible_core_already_parsed_is_given_back_as_it_is():
    rows = [{"host": "h1", "vm": None}]
    assert rendered_json(rows) is rows
    assert rendered_json({"a": 1}) == {"a": 1}


def test_a_template_that_rendered_no_json_is_a_clear_error():
    with pytest.raises(AnsibleFilterError, match="rendered_json: not JSON"):
        rendered_json('[{"host": "h1",]')
    with pytest.raises(AnsibleFilterError, match="rendered_json: JSON text or data, not int"):
        rendered_json(3)
