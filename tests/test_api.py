"""The programmatic API, spoken by the official `openai` and `anthropic` SDKs against a
live daphne and the gateway emulator; the request rules, the tokens and their page."""

import itertools
import json
import math
import re
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest
from django.core.management import call_command
from hypothesis import given, settings
from hypothesis import strategies as st

from api.calls import ApiError, anthropic_call, openai_call
from api.models import ApiToken
from api.tokens import PREFIX, revoke_tokens, token_authenticate, token_create
from tests.conftest import HAIKU, ROOT, SONNET, start_live_server
from tests.emulator import Behaviour

PROMPT = "What are the three laws of thermodynamics?"

# Snippets run in a live server's process: the models wherever they live now.
_IMPORTS = (
    "import json\n"
    "from conversations.models import Conversation, Turn\n"
    "try:\n"
    "    from billing.models import Spend, UserBudget\n"
    "except ImportError:\n"
    "    from billing.models import Spend, UserBudget\n"
)


def server_json(server: Any, code: str) -> Any:
    """Run `code` (which prints one JSON value last) in the server's database."""
    out = server.manage("shell", "-c", _IMPORTS + code)
    return json.loads(out.strip().splitlines()[-1])


def make_token(server: Any, username: str) -> str:
    out = server.manage("create_api_token", username, "--name", "tests")
    return out.strip().splitlines()[-1].split()[-1]


def turns_of(server: Any, conversation_id: str) -> list[list[Any]]:
    return server_json(
        server,
        f"print(json.dumps([[t.role, t.state, t.content] for t in "
        f"Turn.objects.filter(conversation_id='{conversation_id}').order_by('position')]))",
    )


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, module_emulator):
    server = start_live_server(
        tmp_path_factory.mktemp("api"),
        {**module_emulator.env(), "CHAT_SEND_RATE_LIMIT": "1000", "CHAT_HEARTBEAT_INTERVAL": "0.3"},
    )
    server.tokens = {name: make_token(server, name) for name in ("alice", "mallory")}  # type: ignore[attr-defined]
    yield server
    server.stop()
    server.drop_database()


@pytest.fixture
def gateway(module_emulator):
    module_emulator.clear()
    module_emulator.default = Behaviour()
    return module_emulator


def openai_client(server: Any, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=30)


def anthropic_client(server: Any, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=token, max_retries=0, timeout=30)


live = [pytest.mark.live, pytest.mark.postgres]


# --- the two SDKs against a live server --------------------------------------------


@pytest.mark.live
@pytest.mark.postgres
def test_both_sdks_list_the_offered_models(api_server, gateway) -> None:
    token = api_server.tokens["alice"]
    ids = [model.id for model in openai_client(api_server, token).models.list()]
    assert SONNET in ids and HAIKU in ids
    listed = anthropic_client(api_server, token).models.list()
    assert {SONNET, HAIKU} <= {model.id for model in listed.data}


@pytest.mark.live
@pytest.mark.postgres
def test_openai_completion_is_the_emulators_text_with_the_settings_sent_upstream(
    api_server, gateway
) -> None:
    client = openai_client(api_server, api_server.tokens["alice"])
    raw = client.chat.completions.with_raw_response.create(
        model=SONNET,
        messages=[
            {"role": "system", "content": "Answer like a physicist."},
            {"role": "user", "content": PROMPT},
        ],
        temperature=0.3,
        max_tokens=77,
    )
    completion = raw.parse()
    upstream = gateway.requests[-1]
    assert completion.choices[0].message.content == upstream.sent_text
    assert upstream.sent_text.startswith("The three laws of thermodynamics")
    assert completion.choices[0].finish_reason == "stop"
    assert upstream.body == {
        "messages": [{"role": "user", "content": PROMPT}],
        "system": "Answer like a physicist.",
        "temperature": 0.3,
        "max_tokens": 77,
        "stream": True,
    }
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == len(upstream.sent_text.split())
    assert (
        usage.prompt_tokens > 0
        and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    )
    # Stored as alice's conversation, made through the API, titled by its first message.
    conversation_id = raw.headers["x-conversation-id"]
    stored = server_json(
        api_server,
        f"c = Conversation.objects.get(pk='{conversation_id}'); "
        "print(json.dumps([c.owner.username, c.title, hasattr(c, 'api_origin'), "
        "[[t.role, t.state, t.content, t.temperature, t.max_tokens] for t in c.turns.all()]]))",
    )
    assert stored == [
        "alice",
        PROMPT,
        True,
        [
            ["user", "complete", PROMPT, None, None],
            ["assistant", "complete", upstream.sent_text, 0.3, 77],
        ],
    ]


@pytest.mark.live
@pytest.mark.postgres
def test_openai_stream_is_the_emulators_text_with_usage_last(api_server, gateway) -> None:
    gateway.default = Behaviour(token_delay=0.002)
    client = openai_client(api_server, api_server.tokens["alice"])
    chunks = list(
        client.chat.completions.create(
            model=HAIKU,
            messages=[{"role": "user", "content": PROMPT}],
            top_p=0.5,
            max_completion_tokens=300,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    upstream = gateway.requests[-1]
    assert text == upstream.sent_text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(upstream.sent_text.split())
    assert upstream.body["top_p"] == 0.5 and upstream.body["max_tokens"] == 300
    assert "temperature" not in upstream.body


@pytest.mark.live
@pytest.mark.postgres
def test_anthropic_message_is_the_emulators_text_with_the_settings_sent_upstream(
    api_server, gateway
) -> None:
    client = anthropic_client(api_server, api_server.tokens["alice"])
    message = client.messages.create(
        model=SONNET,
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
        max_tokens=123,
        # This SDK release no longer names the sampling settings; the API takes them.
        extra_body={"temperature": 0.0, "top_k": 5},
    )
    upstream = gateway.requests[-1]
    assert message.content[0].type == "text"
    assert message.content[0].text == upstream.sent_text
    assert message.stop_reason == "end_turn"
    assert upstream.body == {
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": PROMPT},
        ],
        "system": "Be brief.",
        "temperature": 0.0,
        "top_k": 5,
        "max_tokens": 123,
        "stream": True,
    }
    assert message.usage.output_tokens == len(upstream.sent_text.split())
    assert message.usage.input_tokens > 0


@pytest.mark.live
@pytest.mark.postgres
def test_anthropic_stream_is_the_emulators_text(api_server, gateway) -> None:
    gateway.default = Behaviour(token_delay=0.002)
    client = anthropic_client(api_server, api_server.tokens["alice"])
    with client.messages.stream(
        model=SONNET, max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    upstream = gateway.requests[-1]
    assert len(pieces) > 1
    assert "".join(pieces) == upstream.sent_text == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(upstream.sent_text.split())


@pytest.mark.live
@pytest.mark.postgres
def test_the_readme_examples_stream_the_reply(api_server, gateway, capsys) -> None:
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    for sdk in ("from openai import", "from anthropic import"):
        (code,) = [example for example in examples if example.startswith(sdk)]
        code = code.replace("http://127.0.0.1:8000", api_server.url)
        exec(code.replace("cct_…", api_server.tokens["alice"]), {})  # noqa: S102
        assert capsys.readouterr().out == gateway.requests[-1].sent_text == "You said: Hello"


@pytest.mark.live
@pytest.mark.postgres
def test_a_wrong_or_revoked_token_is_an_authentication_error(api_server, gateway) -> None:
    for token in ("cct_not-a-real-token", "sk-something-else"):
        with pytest.raises(openai.AuthenticationError):
            openai_client(api_server, token).models.list()
        with pytest.raises(anthropic.AuthenticationError):
            anthropic_client(api_server, token).messages.create(
                model=SONNET, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    revoked = make_token(api_server, "alice")
    server_json(
        api_server,
        "from django.contrib.auth import get_user_model; from api.tokens import revoke_tokens; "
        "from api.models import ApiToken; t = ApiToken.objects.latest('created_at'); "
        "t.revoked_at = t.created_at; t.save(); print(1)",
    )
    with pytest.raises(openai.AuthenticationError):
        openai_client(api_server, revoked).chat.completions.create(
            model=SONNET, messages=[{"role": "user", "content": "hi"}]
        )
    assert gateway.requests == []


@pytest.mark.live
@pytest.mark.postgres
def test_another_persons_token_cannot_continue_the_first_persons_conversation(
    api_server, gateway
) -> None:
    alice = openai_client(api_server, api_server.tokens["alice"])
    raw = alice.chat.completions.with_raw_response.create(
        model=SONNET, messages=[{"role": "user", "content": "Remember the word teal."}]
    )
    conversation_id = raw.headers["x-conversation-id"]
    mallory = openai_client(api_server, api_server.tokens["mallory"])
    with pytest.raises(openai.NotFoundError):
        mallory.chat.completions.create(
            model=SONNET,
            messages=[{"role": "user", "content": "What was the word?"}],
            extra_headers={"x-conversation-id": conversation_id},
        )
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(api_server, api_server.tokens["mallory"]).messages.create(
            model=SONNET,
            max_tokens=10,
            messages=[{"role": "user", "content": "What was the word?"}],
            extra_headers={"x-conversation-id": conversation_id},
        )
    assert len(turns_of(api_server, conversation_id)) == 2
    # Its owner continues it: the stored conversation is the history.
    again = alice.chat.completions.with_raw_response.create(
        model=SONNET,
        messages=[{"role": "user", "content": "What was the word?"}],
        extra_headers={"x-conversation-id": conversation_id},
    )
    assert again.headers["x-conversation-id"] == conversation_id
    assert [role for role, _, _ in turns_of(api_server, conversation_id)] == [
        "user", "assistant", "user", "assistant",
    ]  # fmt: skip
    assert gateway.requests[-1].body["messages"][0]["content"] == "Remember the word teal."
    # Mallory's own API conversations do not include it.
    mine = server_json(
        api_server,
        "print(json.dumps([str(c.pk) for c in "
        "Conversation.objects.filter(owner__username='mallory')]))",
    )
    assert conversation_id not in mine


@pytest.mark.live
@pytest.mark.postgres
def test_bad_parameters_are_400s_naming_them_and_an_unknown_model_is_404(
    api_server, gateway
) -> None:
    client = openai_client(api_server, api_server.tokens["alice"])
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as both:
        client.chat.completions.create(model=SONNET, messages=hello, temperature=0.5, top_p=0.9)
    assert both.value.param == "top_p"
    assert "Drop top_p" in both.value.message
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model=SONNET, messages=hello, temperature=1.5)
    assert hot.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=hello)
    assert unknown.value.code == "model_not_found"
    claude = anthropic_client(api_server, api_server.tokens["alice"])
    with pytest.raises(anthropic.BadRequestError) as zero:
        claude.messages.create(model=SONNET, max_tokens=0, messages=hello)
    assert "max_tokens" in zero.value.message
    with pytest.raises(anthropic.BadRequestError) as too_many:
        claude.messages.create(model=SONNET, max_tokens=64_001, messages=hello)
    assert "max_tokens" in too_many.value.message
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-opus-9", max_tokens=10, messages=hello)
    assert gateway.requests == []


@pytest.mark.live
@pytest.mark.postgres
def test_an_upstream_failure_is_a_5xx_without_the_upstreams_body(api_server, gateway) -> None:
    gateway.enqueue(
        Behaviour(status=400, error_format="anthropic", error_message="UPSTREAM-SECRET-DETAIL")
    )
    with pytest.raises(openai.InternalServerError) as failed:
        openai_client(api_server, api_server.tokens["alice"]).chat.completions.create(
            model=SONNET, messages=[{"role": "user", "content": "hi"}]
        )
    assert failed.value.status_code == 502
    assert "UPSTREAM-SECRET-DETAIL" not in failed.value.response.text


@pytest.mark.live
@pytest.mark.postgres
def test_a_failure_after_the_first_text_ends_the_stream_with_an_error(api_server, gateway) -> None:
    gateway.enqueue(
        Behaviour(tokens=30, token_delay=0.01, error_event_after=10),
        Behaviour(tokens=30, token_delay=0.01, error_event_after=10),
    )
    hello = [{"role": "user", "content": "hi"}]
    received = ""
    with pytest.raises(openai.APIError) as failed:
        for chunk in openai_client(api_server, api_server.tokens["alice"]).chat.completions.create(
            model=SONNET, messages=hello, stream=True
        ):
            received += chunk.choices[0].delta.content or ""
    assert received.startswith("tok0 ") and "tok29" not in received
    assert "Overloaded" not in failed.value.message  # the upstream's words stay inside
    with (
        pytest.raises(anthropic.APIStatusError),
        anthropic_client(api_server, api_server.tokens["alice"]).messages.stream(
            model=SONNET, max_tokens=100, messages=hello
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass


@pytest.mark.live
@pytest.mark.postgres
def test_a_client_that_closes_mid_stream_leaves_a_cancelled_reply_billed_for_its_text(
    api_server, gateway
) -> None:
    gateway.default = Behaviour(tokens=2000, token_delay=0.01)
    request = {
        "model": SONNET,
        "max_tokens": 4000,
        "stream": True,
        "messages": [{"role": "user", "content": "Count for me."}],
    }
    headers = {"authorization": f"Bearer {api_server.tokens['alice']}"}
    received = ""
    with (
        httpx.Client(base_url=api_server.url, timeout=30) as client,
        client.stream("POST", "/v1/messages", json=request, headers=headers) as response,
    ):
        assert response.status_code == 200
        conversation_id = response.headers["x-conversation-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and "text_delta" in line:
                received += json.loads(line[6:])["delta"]["text"]
            if received.count("tok") >= 20:
                break  # the client goes away mid-reply
    deadline = time.monotonic() + 15
    while True:
        (_, state, text), billed = server_json(
            api_server,
            f"t = Turn.objects.get(conversation_id='{conversation_id}', role='assistant'); "
            "s = Spend.objects.filter(turn=t).first(); "
            "print(json.dumps([[t.role, t.state, t.content], "
            "None if s is None else [str(s.cost_usd), s.output_tokens]]))",
        )
        if state != "streaming" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state == "cancelled"
    assert text.startswith(received) and received
    assert text.count("tok") < 2000  # stopped well before the end
    assert billed is not None and float(billed[0]) > 0 and billed[1] > 0
    assert gateway.requests[-1].outcome == "disconnected"


@pytest.mark.live
@pytest.mark.postgres
def test_a_client_that_gives_up_on_a_whole_reply_cancels_it(api_server, gateway) -> None:
    gateway.default = Behaviour(tokens=2000, token_delay=0.01)
    client = openai_client(api_server, api_server.tokens["alice"]).with_options(timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model=SONNET, messages=[{"role": "user", "content": "Take your time."}]
        )
    deadline = time.monotonic() + 15
    while True:
        state, text = server_json(
            api_server,
            "t = Turn.objects.filter(role='assistant').latest('created_at'); "
            "print(json.dumps([t.state, t.content]))",
        )
        if state != "streaming" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state == "cancelled" and text.startswith("tok0 ")
    assert text.count("tok") < 2000


@pytest.mark.live
@pytest.mark.postgres
def test_a_budget_refusal_says_so_and_stores_nothing(api_server, gateway) -> None:
    server_json(
        api_server,
        "from django.contrib.auth import get_user_model; "
        "u = get_user_model().objects.create_user(username='bob', password='x-Long-pass-42'); "
        "UserBudget.objects.create(user=u, monthly_budget_usd='0.00'); print(1)",
    )
    token = make_token(api_server, "bob")
    with pytest.raises(openai.RateLimitError) as refused:
        openai_client(api_server, token).chat.completions.create(
            model=SONNET, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "insufficient_quota"
    assert "budget" in refused.value.message.lower()
    with pytest.raises(anthropic.APIStatusError) as billing:
        anthropic_client(api_server, token).messages.create(
            model=SONNET, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert billing.value.status_code == 402
    assert "budget" in billing.value.message.lower()
    assert (
        server_json(api_server, "print(Conversation.objects.filter(owner__username='bob').count())")
        == 0
    )
    assert gateway.requests == []


@pytest.mark.live
@pytest.mark.postgres
def test_the_rate_limit_is_a_429_with_retry_after(tmp_path, emulator) -> None:
    server = start_live_server(
        tmp_path, {**emulator.env(), "CHAT_SEND_RATE_LIMIT": "2", "CHAT_SEND_RATE_WINDOW": "600"}
    )
    try:
        token = make_token(server, "alice")
        client = openai_client(server, token)
        hello = [{"role": "user", "content": "hi"}]
        for _ in range(2):
            client.chat.completions.create(model=SONNET, messages=hello)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model=SONNET, messages=hello)
        wait = int(limited.value.response.headers["retry-after"])
        assert 500 < wait <= 600
        with pytest.raises(anthropic.RateLimitError):
            anthropic_client(server, token).messages.create(
                model=SONNET, max_tokens=10, messages=hello
            )
        assert len(emulator.requests) == 2
    finally:
        server.stop()
        server.drop_database()


# --- the rules of a request, for every input ------------------------------------------

HELLO = [{"role": "user", "content": "hi"}]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)


def _refusal(parse: Any, body: dict[str, Any]) -> ApiError | None:
    try:
        parse(body)
    except ApiError as error:
        return error
    return None


@settings(max_examples=300, deadline=None)
@given(value=json_values, name=st.sampled_from(["temperature", "top_p"]))
def test_sampling_values_are_taken_only_from_0_to_1(value: Any, name: str) -> None:
    valid = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )
    for parse, extra in ((openai_call, {}), (anthropic_call, {"max_tokens": 10})):
        error = _refusal(parse, {"model": SONNET, "messages": HELLO, name: value, **extra})
        if value is None or valid:
            assert error is None
        else:
            assert error is not None and error.status == 400 and error.param == name


@settings(max_examples=200, deadline=None)
@given(temperature=st.floats(0, 1), top_p=st.floats(0, 1))
def test_temperature_with_top_p_is_always_refused_saying_which_to_drop(
    temperature: float, top_p: float
) -> None:
    body = {"model": SONNET, "messages": HELLO, "temperature": temperature, "top_p": top_p}
    error = _refusal(openai_call, body)
    assert error is not None and error.param == "top_p" and "Drop top_p" in error.message


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_max_tokens_is_a_whole_number_from_1_to_the_models_limit(value: Any) -> None:
    valid = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64_000
    error = _refusal(anthropic_call, {"model": SONNET, "messages": HELLO, "max_tokens": value})
    assert (error is None) == valid
    if error is not None:
        assert error.param == "max_tokens"


@settings(max_examples=200, deadline=None)
@given(
    roles=st.lists(st.sampled_from(["user", "assistant", "system"]), min_size=1, max_size=6),
    texts=st.lists(st.text(max_size=8), min_size=6, max_size=6),
)
def test_a_conversation_reaches_the_model_alternating_and_ending_with_the_user(
    roles: list[str], texts: list[str]
) -> None:
    messages = [{"role": role, "content": text} for role, text in zip(roles, texts, strict=False)]
    try:
        call = openai_call({"model": SONNET, "messages": messages})
    except ApiError as error:
        assert error.status == 400 and error.param is not None
        return
    sent = call.messages
    assert sent[0][0] == "user" and sent[-1][0] == "user" and call.text.strip()
    assert all(a[0] != b[0] for a, b in itertools.pairwise(sent))
    assert all(text.strip() for _, text in sent)


@settings(max_examples=200, deadline=None)
@given(role=json_values | st.sampled_from(["user", "assistant", "system", "developer", "tool"]))
def test_a_message_role_is_one_the_shape_names_or_refused_saying_which(role: Any) -> None:
    shapes = (
        (openai_call, {}, ("system", "developer", "user", "assistant"), "system, developer, user"),
        (anthropic_call, {"max_tokens": 5}, ("user", "assistant"), "must be user or assistant"),
    )
    for parse, extra, roles, named in shapes:
        messages = [{"role": role, "content": "hi"}, *HELLO]
        error = _refusal(parse, {"model": SONNET, "messages": messages, **extra})
        if isinstance(role, str) and role in roles:
            assert error is None or error.param != "messages[0].role"
        else:
            assert error is not None and error.status == 400
            assert error.param == "messages[0].role" and named in error.message


@pytest.mark.parametrize(
    ("parse", "extra", "param"),
    [
        (anthropic_call, {"max_tokens": 5, "stop_sequences": ["x"]}, "stop_sequences"),
        (openai_call, {"stop": "x"}, "stop"),
        (openai_call, {"n": 2}, "n"),
        (openai_call, {"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
        (openai_call, {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (anthropic_call, {"max_tokens": 5, "top_k": 0}, "top_k"),
    ],
)
def test_what_is_not_taken_is_named(parse: Any, extra: dict[str, Any], param: str) -> None:
    error = _refusal(parse, {"model": SONNET, "messages": HELLO, **extra})
    assert error is not None and error.status == 400 and error.param == param


# --- tokens -----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_token_is_stored_only_as_its_hash_and_works_until_revoked(user) -> None:
    token, secret = token_create(owner=user, name="laptop")
    assert secret.startswith(PREFIX) and len(secret) > 40
    stored = ApiToken.objects.get()
    assert secret not in (stored.secret_hash, stored.hint, stored.name)
    assert token_authenticate(secret) == token
    assert ApiToken.objects.get().last_used_at is not None
    assert token_authenticate(secret + "x") is None
    assert revoke_tokens(user) == 1
    assert token_authenticate(secret) is None


@pytest.mark.postgres
@pytest.mark.django_db
def test_deactivating_an_account_revokes_its_tokens(user, other_user) -> None:
    _, secret = token_create(owner=user, name="ci")
    _, theirs = token_create(owner=other_user, name="ci")
    user.is_active = False
    user.save()
    assert ApiToken.objects.get(owner=user).revoked_at is not None
    user.is_active = True
    user.save()
    assert token_authenticate(secret) is None  # a revoked token stays revoked
    assert token_authenticate(theirs) is not None


@pytest.mark.postgres
@pytest.mark.django_db
def test_signing_out_everywhere_revokes_the_tokens(client, user, other_user) -> None:
    _, secret = token_create(owner=user, name="laptop")
    _, theirs = token_create(owner=other_user, name="laptop")
    client.force_login(user)
    assert client.post("/accounts/sign-out-everywhere/").status_code == 302
    assert token_authenticate(secret) is None
    assert token_authenticate(theirs) is not None


@pytest.mark.postgres
@pytest.mark.django_db
def test_create_api_token_prints_the_token_as_the_last_word(user, capsys) -> None:
    call_command("create_api_token", "alice", "--name", "deploy script")
    secret = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert token_authenticate(secret).name == "deploy script"  # type: ignore[union-attr]


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_token_page_makes_shows_once_and_revokes(client, user, other_user) -> None:
    assert client.get("/settings/tokens/").status_code == 302  # signed in only
    client.force_login(user)
    page = client.post("/settings/tokens/", {"name": "notebook"})
    assert page.status_code == 200
    secret = page.context["secret"]
    assert secret in page.content.decode() and page["Cache-Control"] == "no-store"
    again = client.get("/settings/tokens/").content.decode()
    assert "notebook" in again and secret not in again and "never" in again
    assert client.post("/settings/tokens/", {"name": " "}).status_code == 400
    token = ApiToken.objects.get(owner=user)
    theirs, _ = token_create(owner=other_user, name="theirs")
    client.post(f"/settings/tokens/{theirs.pk}/revoke/")
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is None  # not hers to revoke
    assert client.post(f"/settings/tokens/{token.pk}/revoke/").status_code == 302
    assert token_authenticate(secret) is None
    assert "revoked" in client.get("/settings/tokens/").content.decode()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # the views use the database thread, as in a server
def test_a_token_follows_its_owners_team_model_rules(client, user, cloudflare_settings) -> None:
    try:
        from teams.models import Membership, Team
    except ImportError:
        from teams.models import Membership, Team
    team = Team.objects.create(name="research", allowed_models=[HAIKU])
    Membership.objects.create(team=team, user=user)
    _, secret = token_create(owner=user, name="script")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    listed = client.get("/v1/models", **auth).json()
    assert [model["id"] for model in listed["data"]] == [HAIKU]
    body = {"model": SONNET, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    refused = client.post(
        "/v1/messages", json.dumps(body), content_type="application/json", HTTP_X_API_KEY=secret
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert not user.conversations.exists()


@pytest.mark.postgres
@pytest.mark.django_db
def test_api_conversations_stay_out_of_the_sidebar_and_are_found(client, user) -> None:
    from api.models import ApiConversation
    from conversations.models import Conversation

    made = Conversation.objects.create(owner=user, model=SONNET, title="From a script")
    ApiConversation.objects.create(conversation=made)
    Conversation.objects.create(owner=user, model=SONNET, title="From the page")
    client.force_login(user)
    page = client.get("/").content.decode()
    sidebar = page[page.index('id="sidebar"') : page.index("<main")]
    assert "From the page" in sidebar and "From a script" not in sidebar
    found = client.get("/?q=script").content.decode()
    assert "From a script" in found[found.index("<main") :]
    listed = client.get("/?q=&source=api").content.decode()
    main = listed[listed.index("<main") :]
    assert "From a script" in main and "From the page" not in main
