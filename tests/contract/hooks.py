"""Schemathesis hooks for the contract test (tests/contract/run.py loads them with SCHEMATHESIS_HOOKS).

1. The Manage family's protobuf bodies. Requests whose media type is `application/x-protobuf` are
   encoded as the message the document names (`x-protobuf-message`), and answers in that media type
   are decoded with `proto/gatehouse/manage/v2/manage.proto` into the form of the message's proto3
   JSON mapping (absent `optional` fields as `null`), which schemathesis then checks against the
   document's schema like a JSON answer. The `.proto` file is read by the small parser below (the
   Python protobuf package has no `.proto` compiler of its own, and `protoc` is not needed
   elsewhere): it knows the subset that file uses and refuses anything else, so a change to the file
   that it cannot read fails the run instead of being skipped.

2. The state an operation's success path needs and that no generated value can supply: a code that
   was texted to the user, a TOTP code, a domain verification record. For every other positive test
   case of those operations (the others keep their generated values, so wrong codes and unknown
   ids are tested as well), the hook first asks gatehouse for the code through its API, as a
   client would, reads it where it was delivered (the SMS outbox of `sms.kind = "log"`) and puts it
   in the case. Domain operations are pointed at a domain that exists (DELETE at a throwaway one).

The state (addresses, credentials, ids) comes from the JSON file named by GATEHOUSE_CONTRACT_STATE.
"""

import base64
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

import schemathesis
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from schemathesis.generation.modes import GenerationMode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(ROOT, "proto", "gatehouse", "manage", "v2", "manage.proto")
DOCUMENT = os.path.join(ROOT, "openapi", "openapi.json")
PROTOBUF = "application/x-protobuf"


# --- protobuf ------------------------------------------------------------------------------------

SCALARS = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}
FIELD = re.compile(
    r'^(?:(optional|repeated)\s+)?([A-Za-z_][\w.]*)\s+([a-z_][a-z0-9_]*)\s*=\s*(\d+)'
    r'(?:\s*\[\s*json_name\s*=\s*"([^"]+)"\s*\])?\s*;$'
)


def camel(name):
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def parse_proto(text):
    """A FileDescriptorProto for the proto3 subset of manage.proto: a package and flat messages of
    scalar, message-typed, `optional` and `repeated` fields, with `json_name` options."""
    text = re.sub(r"//[^\n]*", "", text)
    file = descriptor_pb2.FileDescriptorProto(name="gatehouse/manage/v2/manage.proto", syntax="proto3")
    message = None
    for statement in re.findall(r"[^;{}]*[;{}]", text):
        statement = " ".join(statement.split())
        if not statement:
            continue
        if statement.startswith("syntax ") and '"proto3"' in statement:
            continue
        if found := re.fullmatch(r"package ([\w.]+);", statement):
            file.package = found.group(1)
        elif found := re.fullmatch(r"message (\w+) ?\{", statement):
            if message is not None:
                raise ValueError(f"{PROTO}: nested messages are not supported: {statement}")
            message = file.message_type.add(name=found.group(1))
        elif statement == "}" and message is not None:
            message = None
        elif message is not None and (found := FIELD.match(statement)):
            label, kind, name, number, json_name = found.groups()
            field = message.field.add(name=name, number=int(number), json_name=json_name or camel(name))
            field.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if label == "repeated"
                           else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if kind in SCALARS:
                field.type = SCALARS[kind]
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{file.package}.{kind}"
            if label == "optional":
                # proto3 `optional`: a synthetic oneof of its own.
                field.proto3_optional = True
                field.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{name}")
        else:
            raise ValueError(f"{PROTO}: cannot read `{statement}`")
    return file


def load_messages():
    with open(PROTO) as f:
        file = parse_proto(f.read())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        f"{file.package}.{m.name}": message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{file.package}.{m.name}"))
        for m in file.message_type
    }


MESSAGES = load_messages()


def to_json_form(message):
    """The message as its proto3 JSON mapping (gatehouse's JSON answers): every field by its JSON
    name, an unset `optional` field as null, an unset message field left out."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            out[field.json_name] = [to_json_form(v) if field.message_type else v for v in value]
        elif field.message_type is not None:
            if message.HasField(field.name):
                out[field.json_name] = to_json_form(value)
        elif field.has_presence and not message.HasField(field.name):
            out[field.json_name] = None
        else:
            out[field.json_name] = value
    return out


def from_json_form(cls, value):
    """A message of `cls` from a generated body, or None when the body cannot be one (negative
    test data: the hook then sends bytes that are not that message)."""
    if not isinstance(value, dict):
        return None
    message = cls()
    fields = {f.json_name: f for f in cls.DESCRIPTOR.fields}
    for key, item in value.items():
        field = fields.get(key)
        if field is None or item is None:
            return None
        try:
            setattr(message, field.name, item)
        except (TypeError, ValueError):
            return None
    return message


with open(DOCUMENT) as f:
    DOC = json.load(f)


def resolve(value):
    while isinstance(value, dict) and "$ref" in value:
        target = DOC
        for part in value["$ref"].lstrip("#/").split("/"):
            target = target[part]
        value = target
    return value


def protobuf_message(schema):
    name = resolve(schema).get("x-protobuf-message")
    if name not in MESSAGES:
        raise ValueError(f"the document names no known protobuf message: {name!r}")
    return MESSAGES[name]


def operation_of(operation):
    item = resolve(DOC["paths"][operation.path])
    return item[operation.method.lower()]


@schemathesis.serializer(PROTOBUF)
def protobuf_request(ctx, value):
    operation = operation_of(ctx.case.operation)
    cls = protobuf_message(operation["requestBody"]["content"][PROTOBUF]["schema"])
    if isinstance(value, bytes):
        return {"data": value}
    message = from_json_form(cls, value)
    if message is None:
        # Not the message: a tag with a wire type no field of it has (4 is END_GROUP, never valid
        # at the top level), followed by what was generated.
        return {"data": b"\x0c" + json.dumps(value, default=str).encode()}
    return {"data": message.SerializeToString()}


@schemathesis.deserializer(PROTOBUF)
def protobuf_response(ctx, response):
    operation = operation_of(ctx.operation)
    responses = operation["responses"]
    documented = resolve(responses.get(str(response.status_code)) or responses.get("default") or {})
    media = documented.get("content", {}).get(PROTOBUF)
    if media is None:
        raise ValueError(f"{response.status_code} has no documented {PROTOBUF} answer")
    message = protobuf_message(media["schema"])()
    message.ParseFromString(response.content)  # raises DecodeError on bytes that are not it
    if has_unknown_fields(message):
        raise ValueError(f"the answer holds fields that {message.DESCRIPTOR.full_name} does not have")
    return to_json_form(message)


def has_unknown_fields(message):
    from google.protobuf import unknown_fields

    if len(unknown_fields.UnknownFieldSet(message)):
        return True
    return any(
        has_unknown_fields(item)
        for field in message.DESCRIPTOR.fields if field.message_type is not None
        for item in (getattr(message, field.name) if field.is_repeated
                     else [getattr(message, field.name)] if message.HasField(field.name) else [])
    )


# --- state for success paths ---------------------------------------------------------------------

STATE = {}
if os.environ.get("GATEHOUSE_CONTRACT_STATE"):
    with open(os.environ["GATEHOUSE_CONTRACT_STATE"]) as f:
        STATE = json.load(f)

LOCK = threading.Lock()
COUNTS = {}


def call(url, method="GET", body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = dict(headers or {})
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def checked(what, status, body, *wanted):
    if status not in wanted:
        raise RuntimeError(f"contract hook: {what} answered {status}: {body[:300]!r}")
    return json.loads(body) if body else None


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def as_user():
    return {"Authorization": basic(STATE["user"], STATE["password"])}


def as_user_with_mfa():
    return {"Authorization": f"Bearer {STATE['access_token']}", "ApplicationToken": STATE["app_token"]}


def texted_code(number, since):
    """The code of the first text to `number` after byte `since` of the outbox, waiting for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(STATE["outbox"], "rb") as f:
                f.seek(since)
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith(f"to={number} ") and (found := re.search(r"code is (\d+)", line)):
                        return found.group(1)
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"contract hook: no code was texted to {number}")


def outbox_size():
    try:
        return os.path.getsize(STATE["outbox"])
    except FileNotFoundError:
        return 0


def totp_now(secret):
    import pyotp

    return pyotp.TOTP(secret).now()


def enrollment_secret(ticket_url):
    path = "/" + ticket_url.split("://", 1)[1].split("/", 1)[1]
    status, page = call(STATE["http"] + path)
    found = re.search(rb'<code id="secret">([^<]+)</code>', page) if status == 200 else None
    if not found:
        raise RuntimeError(f"contract hook: the enrollment page answered {status} without a secret")
    return re.sub(r"\s", "", found.group(1).decode())


def domains_url(domain_id=None):
    url = f"{STATE['http']}/v1/organizations/{STATE['organization']}/domains"
    return url if domain_id is None else f"{url}/{domain_id}"


def domain_id(name):
    """The id of the organisation's domain `name`, created when missing (a run may delete it)."""
    listed = checked("listing domains", *call(domains_url(), headers=as_user()), 200)
    for domain in listed if isinstance(listed, list) else listed.get("domains", []):
        if domain.get("domain") == name:
            return domain["domainId"]
    created = checked("creating a domain", *call(domains_url(), "POST", {"domain": name}, headers=as_user()), 201)
    return created["domainId"]


def publish_txt(name, values):
    with open(STATE["dns_records"] + ".tmp", "w") as f:
        json.dump({name: values}, f)
    os.replace(STATE["dns_records"] + ".tmp", STATE["dns_records"])


def set_body(case, **fields):
    body = dict(case.body) if isinstance(case.body, dict) else {}
    body.update(fields)
    case.body = body


def ws_verify(case, turn):
    if turn % 2:
        return
    case.query = {**(case.query or {}), "FileId": STATE["file"]}
    since = outbox_size()
    answer = checked("WS opt-in", *call(
        f"{STATE['http']}/User/2fa-opt-in?FileId={STATE['file']}", "POST", {"MobileNumber": STATE["phone"]},
        headers={"Authorization": f"Bearer {STATE['access_token']}", "Accept": "application/json"}), 200)
    set_body(case, ProviderUserId=answer["ProviderUserId"], Otp=texted_code(STATE["phone"], since))


def manage_send(case, turn):
    if turn % 2 == 0:
        set_body(case, userName=STATE["user"], phoneNumber=STATE["phone"])


def manage_validate(case, turn):
    if turn % 2:
        return
    since = outbox_size()
    checked("Manage send/otp", *call(
        f"{STATE['http']}/manage/v2/user/send/otp", "POST",
        {"userName": STATE["user"], "phoneNumber": STATE["phone"]},
        headers={"Authorization": basic(STATE["service"], STATE["password"])}), 200)
    set_body(case, userName=STATE["user"], phoneNumber=STATE["phone"], otp=texted_code(STATE["phone"], since))


def with_session(case, **code):
    """`code` as the only code of a verify body; a generated `accessToken` becomes the user's own."""
    body = {"otp": None, "oob": None, **code}
    if isinstance(case.body, dict) and case.body.get("accessToken") is not None:
        body["accessToken"] = STATE["access_token"]
    case.body = body


def verify_otp(case, turn):
    if turn % 2:
        return
    since = outbox_size()
    checked("mfa-challenge", *call(f"{STATE['http']}/v1/me/mfa-challenge?factor=sms", "POST",
                                   headers=as_user()), 202)
    with_session(case, oob=texted_code(STATE["phone"], since))


def verify_enrollment(case, turn):
    if turn % 2:
        return
    # The newest pending ticket is told by its creation second (ties go to the greatest id):
    # a ticket the run made earlier in the same second could be taken for this one.
    time.sleep(1.01 - time.time() % 1)
    answer = checked("mfa-enrollment", *call(
        f"{STATE['http']}/v1/me/mfa-enrollment?factor=otp&isInteractive=true", "POST",
        headers=as_user_with_mfa()), 200)
    with_session(case, otp=totp_now(enrollment_secret(answer["ticketUrl"])))


def admin(method, path, body=None):
    return call(STATE["admin"] + path, method, body, headers={"Authorization": f"Bearer {STATE['admin_token']}"})


def admin_user(case, turn):
    """The seeded user for reads and changes (created again if a run renamed or deleted it), a
    throwaway one for DELETE."""
    if case.method.upper() == "DELETE":
        name = f"gone-{time.monotonic_ns()}"
        checked("creating a user", *admin("POST", "/admin/v1/users", {"userName": name}), 201)
        case.path_parameters["userName"] = name
        return
    name = STATE["target"]
    status, body = admin("GET", f"/admin/v1/users/{name}")
    if status == 404:
        checked("creating a user", *admin("POST", "/admin/v1/users", {"userName": name}), 201)
    case.path_parameters["userName"] = name


def domain_item(case, turn):
    if case.path_parameters.get("organizationId") != STATE["organization"]:
        return
    if case.method.upper() == "DELETE":
        # A throwaway domain, so that the seeded one stays for the other operations.
        name = f"gone-{time.monotonic_ns()}.{STATE['domain']}"
        created = checked("creating a domain", *call(domains_url(), "POST", {"domain": name},
                                                     headers=as_user()), 201)
        case.path_parameters["domainId"] = created["domainId"]
        return
    case.path_parameters["domainId"] = domain_id(STATE["domain"])


def domain_verify(case, turn):
    if case.path_parameters.get("organizationId") != STATE["organization"]:
        return
    found = domain_id(STATE["domain"])
    case.path_parameters["domainId"] = found
    record = f"{STATE['record_name']}.{STATE['domain']}"
    if turn % 2:
        publish_txt(record, [])
        return
    code = checked("reading the domain", *call(domains_url(found), headers=as_user()), 200)["verificationCode"]
    if code is None:
        code = checked("generate-code", *call(f"{domains_url(found)}/generate-code", "POST",
                                              headers=as_user()), 201)["verificationCode"]
    publish_txt(record, [code])


ORACLES = {
    ("POST", "/User/verify-2fa-opt-in"): ws_verify,
    ("POST", "/manage/v2/user/send/otp"): manage_send,
    ("POST", "/manage/v2/user/validate/otp"): manage_validate,
    ("POST", "/v1/me/verify-otp"): verify_otp,
    ("POST", "/v1/me/verify-enrollment-otp"): verify_enrollment,
    ("GET", "/v1/organizations/{organizationId}/domains/{domainId}"): domain_item,
    ("DELETE", "/v1/organizations/{organizationId}/domains/{domainId}"): domain_item,
    ("POST", "/v1/organizations/{organizationId}/domains/{domainId}/generate-code"): domain_item,
    ("POST", "/v1/organizations/{organizationId}/domains/{domainId}/verify"): domain_verify,
    ("GET", "/admin/v1/users/{userName}"): admin_user,
    ("PATCH", "/admin/v1/users/{userName}"): admin_user,
    ("DELETE", "/admin/v1/users/{userName}"): admin_user,
    ("POST", "/admin/v1/users/{userName}/mfa/reset"): admin_user,
}


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.media_type == PROTOBUF and "Accept" not in (case.headers or {}):
        # A client that sends protobuf reads protobuf: the answers are then checked in that
        # encoding too (gatehouse answers in the encoding `Accept` asks for, JSON by default).
        case.headers = {**(case.headers or {}), "Accept": PROTOBUF}
    if not STATE:
        return
    oracle = ORACLES.get((case.method.upper(), case.operation.path))
    meta = case.meta
    if oracle is None or meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    # Counted per phase: each phase's scenario must reach the success path on its own.
    key = (case.method.upper(), case.operation.path, getattr(meta.phase, "name", meta.phase))
    with LOCK:
        turn = COUNTS.get(key, 0)
        COUNTS[key] = turn + 1
        oracle(case, turn)


@schemathesis.hook
def after_call(context, case, response):
    """Answers to positive cases, in `hooks.log` beside the state file, to see why a success path
    was not reached: every answer for the operations above, and every 400 and 422 (data refused)."""
    meta = case.meta
    if not STATE or meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    if (case.method.upper(), case.operation.path) not in ORACLES and response.status_code not in (400, 422):
        return
    phase = getattr(meta.phase, "name", meta.phase)
    with LOCK, open(os.path.join(os.path.dirname(os.environ["GATEHOUSE_CONTRACT_STATE"]), "hooks.log"), "a") as f:
        f.write(json.dumps({"phase": str(phase), "method": case.method, "path": case.operation.path,
                            "headers": {k: v for k, v in (case.headers or {}).items()
                                        if k.lower() not in ("authorization", "applicationtoken")},
                            "path_parameters": case.path_parameters,
                            "sent": case.body if isinstance(case.body, (dict, list, str)) else repr(case.body),
                            "status": response.status_code,
                            "answer": response.content[:300].decode(errors="replace")}, default=str) + "\n")
