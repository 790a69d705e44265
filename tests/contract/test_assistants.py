"""Assistants through the official SDK in strict mode, on SQLite and PostgreSQL."""

from __future__ import annotations

import openai
import pytest


def test_create_retrieve_modify_delete(client: openai.OpenAI) -> None:
    created = client.beta.assistants.create(
        model="gpt-4o",
        name="Math tutor",
        instructions="Be brief.",
        tools=[
            {"type": "code_interpreter"},
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        ],
        metadata={"team": "a"},
        temperature=0.5,
    )
    assert created.id.startswith("asst_")
    assert created.tools[1].type == "function"
    assert created.temperature == 0.5 and created.top_p == 1.0
    assert created.response_format == "auto"
    fetched = client.beta.assistants.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    updated = client.beta.assistants.update(created.id, name="Renamed", metadata={"team": "b"})
    assert updated.name == "Renamed" and updated.metadata == {"team": "b"}
    assert updated.instructions == "Be brief."
    deleted = client.beta.assistants.delete(created.id)
    assert deleted.deleted and deleted.object == "assistant.deleted"
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.assistants.retrieve(created.id)
    assert err.value.body == {
        "message": f"No assistant found with id '{created.id}'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_auto_pagination_both_orders(client: openai.OpenAI, order: str) -> None:
    made = [client.beta.assistants.create(model="gpt-4o", metadata={"order_test": order}).id for _ in range(7)]
    seen = [a.id for a in client.beta.assistants.list(limit=2, order=order) if a.id in made]  # type: ignore[arg-type]
    expected = made if order == "asc" else list(reversed(made))
    assert seen == expected


def test_validation_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="gpt-4o", name="x" * 257)
    assert err.value.code == "string_above_max_length" and err.value.param == "name"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="gpt-4o", extra_body={"colour": "red"})
    assert err.value.body["message"] == "Unrecognized request argument supplied: colour"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="gpt-4o", metadata={str(i): "v" for i in range(17)})
    assert err.value.code == "object_above_max_properties"


def test_other_project_sees_nothing(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    mine = client.beta.assistants.create(model="gpt-4o")
    with pytest.raises(openai.NotFoundError):
        other_client.beta.assistants.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other_client.beta.assistants.delete(mine.id)
    assert mine.id not in [a.id for a in other_client.beta.assistants.list(limit=100)]
    assert client.beta.assistants.retrieve(mine.id).id == mine.id
