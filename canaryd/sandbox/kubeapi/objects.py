"""The generic registry: what create, get, list, update, patch and delete do to any resource type.

This follows the apiserver's `genericregistry.Store` plus the custom-resource strategy, in the order
the real server applies them, because the order decides which error a client sees: decoding (400),
namespace existence (404), validation (422), resourceVersion preconditions (409), existence (409
AlreadyExists). Metadata is owned by the server (uid, creationTimestamp, resourceVersion,
generation); the status subresource splits who may write `status`; a write that changes nothing is
not a write (no new resourceVersion, no watch event), exactly as etcd3's GuaranteedUpdate behaves.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from canaryd.sandbox.kubeapi.decoding import DecodeError, decode_typed
from canaryd.sandbox.kubeapi.errors import (
    INVALID,
    REQUIRED,
    ApiError,
    FieldError,
    GoLiteral,
    already_exists,
    bad_request,
    conflict,
    expired,
    internal,
    invalid,
    not_found,
    status_body,
)
from canaryd.sandbox.kubeapi.patch import apply_patch
from canaryd.sandbox.kubeapi.resources import (
    OBJECT_META,
    OBJECT_META_SCHEMA,
    Base64Error,
    Registry,
    ResourceType,
)
from canaryd.sandbox.kubeapi.schema import apply_defaults, canonical_order, embedded_objects, prune, prune_nulls
from canaryd.sandbox.kubeapi.schemavalidation import validate, validate_list_types
from canaryd.sandbox.kubeapi.selectors import parse_field_selector, parse_label_selector
from canaryd.sandbox.kubeapi.store import Obj, Store
from canaryd.sandbox.kubeapi.validation import validate_meta_update, validate_object_meta

NAMESPACES_KEY = "/namespaces"
_META_FIELDS = frozenset(OBJECT_META["properties"])
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def json_copy(o: Any) -> Any:
    return json.loads(json.dumps(o))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Ignore | Warn | Strict


@dataclass
class Result:
    body: dict[str, Any]
    code: int = 200
    warnings: list[str] = field(default_factory=list)


CrdHook = Callable[[Obj], None]


class ObjectApi:
    """Resource semantics over a Store; every public method raises ApiError for a non-2xx answer."""

    def __init__(self, store: Store, registry: Registry, *, on_crd_created: CrdHook | None = None,
                 on_crd_deleted: CrdHook | None = None) -> None:
        self.store = store
        self.registry = registry
        self._on_crd_created = on_crd_created
        self._on_crd_deleted = on_crd_deleted

    # ---------------------------------------------------------------- reads

    def render(self, rt: ResourceType, obj: Obj) -> Obj:
        """The stored object as the requested version shows it (conversion strategy None)."""
        if obj.get("apiVersion") == rt.api_version:
            return obj
        return {**obj, "apiVersion": rt.api_version}

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.store.get(rt.storage_key, namespace, name)
        if obj is None:
            raise not_found(rt.group, rt.plural, name)
        return self.render(rt, obj)

    def list_collection(self, rt: ResourceType, namespace: str | None, *, label_selector: str | None = None,
                        field_selector: str | None = None, limit: int | None = None,
                        continue_token: str | None = None) -> Obj:
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, rt.allows_field)
        items, rv = self.store.scan(rt.storage_key, namespace)
        start: tuple[str, str] | None = None
        if continue_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start, rv = (str(token["start"][0]), str(token["start"][1])), int(token["rv"])
            except (ValueError, KeyError, TypeError, IndexError):
                raise bad_request(f"continue key is not valid: {continue_token}") from None
        selected = []
        for o in items:
            m = o["metadata"]
            if start is not None and (m.get("namespace", ""), m["name"]) <= start:
                continue
            if labels.matches(m.get("labels")) and fields.matches(o):
                selected.append(o)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and limit > 0 and len(selected) > limit:
            last = selected[limit - 1]["metadata"]
            token = {"rv": rv, "start": [last.get("namespace", ""), last["name"]]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(selected) - limit
            selected = selected[:limit]
        if rt.builtin:
            rendered = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in selected]
        else:
            rendered = [self.render(rt, o) for o in selected]
        return {"apiVersion": rt.api_version, "items": rendered, "kind": rt.list_kind, "metadata": meta}

    # ---------------------------------------------------------------- decoding (request body -> object)

    def _decode(self, rt: ResourceType, body: Any, opts: WriteOptions) -> tuple[Obj, list[str]]:
        if not isinstance(body, dict):
            raise bad_request(f"Object 'Kind' is missing in '{json.dumps(body)}'")
        obj: Obj = body
        self._check_type_meta(rt, obj)
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request(f"json: cannot unmarshal {_go_json_kind(meta)} into Go struct field "
                              f"{rt.kind}.metadata of type v1.ObjectMeta")
        pruned = [f"metadata.{k}" for k in meta if k not in _META_FIELDS]
        for k in pruned:
            del meta[k[len("metadata."):]]
        try:
            decode_typed(meta, OBJECT_META_SCHEMA, "ObjectMeta", "metadata")
        except DecodeError as e:
            raise bad_request(str(e)) from None
        for k in ("selfLink", "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(k, None)
        if rt.prune_unknown:
            pruned += prune(obj, rt.schema)
        if rt.builtin:
            try:
                decode_typed(obj, rt.schema, rt.kind)
                if rt.prepare is not None:
                    rt.prepare(obj)
            except DecodeError as e:
                raise bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {e}'
                                  ) from None
            except Base64Error as e:
                raise bad_request(str(e)) from None
        elif rt.prune_unknown:  # structural schemas only: defaults need pruning (v1beta1 keep-unknown has neither)
            prune_nulls(obj, rt.schema)
            apply_defaults(obj, rt.schema)
            for _, emb in embedded_objects(obj, rt.schema):
                emb_meta = emb.get("metadata")
                if isinstance(emb_meta, dict):
                    for k in [k for k in emb_meta if k not in _META_FIELDS]:
                        del emb_meta[k]
        if opts.field_validation == "Strict" and pruned:
            raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in pruned))
        warnings = [] if opts.field_validation == "Ignore" else [f'unknown field "{p}"' for p in pruned]
        return obj, warnings

    def _check_type_meta(self, rt: ResourceType, obj: Obj) -> None:
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if rt.builtin:
            if kind not in (None, "", rt.kind) or api_version not in (None, "", rt.api_version):
                raise bad_request(f"the object provided is unrecognized (must be of type {rt.kind}): "
                                  f"{kind} in version {api_version!s}")
        else:
            if not kind:
                raise bad_request(f"Object 'Kind' is missing in '{json.dumps(obj, separators=(',', ':'))}'")
            if not api_version:
                raise bad_request(f"Object 'apiVersion' is missing in '{json.dumps(obj, separators=(',', ':'))}'")
            group, _, version = str(api_version).rpartition("/")
            if group != rt.group or self.registry.get(group, version, rt.plural) is None:
                raise bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                  f"API version ({rt.api_version})")
            if kind != rt.kind:
                raise invalid(rt.group, rt.kind, (obj.get("metadata") or {}).get("name", ""),
                              [FieldError(INVALID, "kind", kind, f"must be {rt.kind}")])
        obj["kind"] = rt.kind
        obj["apiVersion"] = f"{rt.group}/{rt.storage_version}" if rt.group else rt.storage_version

    def _check_identity(self, rt: ResourceType, namespace: str, meta: dict[str, Any], name: str | None) -> None:
        if rt.namespaced:
            if not meta.get("namespace"):
                meta["namespace"] = namespace
            elif meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name", "") != name:
            raise bad_request(f"the name of the object ({meta.get('name', '')}) does not match the name on the "
                              f"URL ({name})")

    # ---------------------------------------------------------------- validation

    def _validate(self, rt: ResourceType, obj: Obj, old: Obj | None, *, status_only: bool = False
                  ) -> list[FieldError]:
        errs: list[FieldError] = []
        if old is not None:
            errs += validate_meta_update(obj, old)
        errs += validate_object_meta(obj["metadata"], namespaced=rt.namespaced, name_errors=rt.name_rule)
        if rt.builtin:
            if rt.validator is not None:
                errs += rt.validator(obj, old)
            return errs
        if status_only:
            sub = rt.schema.properties.get("status")
            if sub is not None and "status" in obj:
                errs += validate(obj["status"], sub, "status")
        else:
            errs += validate(obj, rt.schema)
            errs += _validate_embedded(obj, rt)
        errs += validate_list_types(obj, rt.schema)
        if rt.validator is not None:
            errs += rt.validator(obj, old)
        return errs

    # ---------------------------------------------------------------- create

    def create(self, rt: ResourceType, namespace: str, body: Any, opts: WriteOptions | None = None) -> Result:
        opts = opts or WriteOptions()
        obj, warnings = self._decode(rt, body, opts)
        self._check_identity(rt, namespace, obj["metadata"], None)
        with self.store.lock:
            return self._create_locked(rt, namespace, obj, opts, warnings)

    def _create_locked(self, rt: ResourceType, namespace: str, obj: Obj, opts: WriteOptions,
                       warnings: list[str]) -> Result:
        meta = obj["metadata"]
        if rt.namespaced and self.store.get(NAMESPACES_KEY, "", namespace) is None:
            raise not_found("", "namespaces", namespace)
        if rt.status_subresource and not rt.builtin:
            obj.pop("status", None)
        meta.pop("generation", None)
        if not rt.builtin:
            meta["generation"] = 1
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generate_name(rt, namespace, meta["generateName"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        rv = meta.pop("resourceVersion", None)
        errs = self._validate(rt, obj, None)
        if errs:
            raise invalid(rt.group, rt.kind, meta.get("name", ""), errs)
        if rv:
            raise internal("resourceVersion should not be set on objects to be created")
        if self.store.get(rt.storage_key, namespace if rt.namespaced else "", meta["name"]) is not None:
            raise already_exists(rt.group, rt.plural, meta["name"])
        if rt.extra.get("crd"):
            self._prepare_crd(obj)
        obj = _canonical(rt, obj)
        if opts.dry_run:
            del obj["metadata"]["resourceVersion"]
            return Result(self.render(rt, obj), 201, warnings)
        stored = self.store.create(rt.storage_key, obj)
        if rt.extra.get("crd") and self._on_crd_created is not None:
            self._on_crd_created(stored)
        return Result(self.render(rt, stored), 201, warnings)

    def _generate_name(self, rt: ResourceType, namespace: str, prefix: str) -> str:
        ns = namespace if rt.namespaced else ""
        while True:
            name = prefix[:58] + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
            if self.store.get(rt.storage_key, ns, name) is None:
                return name

    # ---------------------------------------------------------------- update / patch

    def replace(self, rt: ResourceType, namespace: str, name: str, body: Any, *, subresource: str = "",
                opts: WriteOptions | None = None) -> Result:
        opts = opts or WriteOptions()
        obj, warnings = self._decode(rt, body, opts)
        self._check_identity(rt, namespace, obj["metadata"], name)
        with self.store.lock:
            cur = self.store.get(rt.storage_key, namespace if rt.namespaced else "", name)
            if cur is None:
                if rt.allow_create_on_update and not subresource:
                    return self._create_locked(rt, namespace, obj, opts, warnings)
                raise not_found(rt.group, rt.plural, name)
            return self._update_locked(rt, cur, obj, subresource, opts, warnings)

    def patch(self, rt: ResourceType, namespace: str, name: str, body: bytes, content_type: str, *,
              subresource: str = "", opts: WriteOptions | None = None) -> Result:
        opts = opts or WriteOptions()
        with self.store.lock:
            cur = self.store.get(rt.storage_key, namespace if rt.namespaced else "", name)
            if cur is None:
                raise not_found(rt.group, rt.plural, name)
            patched = apply_patch(self.render(rt, cur), body, content_type, builtin=rt.builtin)
            obj, warnings = self._decode(rt, patched, opts)
            self._check_identity(rt, namespace, obj["metadata"], name)
            return self._update_locked(rt, cur, obj, subresource, opts, warnings)

    def _update_locked(self, rt: ResourceType, cur: Obj, obj: Obj, subresource: str, opts: WriteOptions,
                       warnings: list[str]) -> Result:
        cur_meta = cur["metadata"]
        name = cur_meta["name"]
        wanted_rv = obj["metadata"].get("resourceVersion") or ""
        if not wanted_rv:
            if not rt.allow_unconditional_update:
                raise invalid(rt.group, rt.plural, name, [FieldError(
                    INVALID, "metadata.resourceVersion", GoLiteral("0x0"), "must be specified for an update")])
        elif wanted_rv != cur_meta["resourceVersion"]:
            raise conflict(rt.group, rt.plural, name)
        if subresource == "status":
            new: Obj = json_copy(cur)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        else:
            new = obj
            meta = new["metadata"]
            if rt.status_subresource:
                if "status" in cur:
                    new["status"] = cur["status"]
                else:
                    new.pop("status", None)
            meta.pop("generation", None)
            if "generation" in cur_meta:
                meta["generation"] = cur_meta["generation"]
            if not meta.get("uid"):
                meta["uid"] = cur_meta["uid"]
            meta["creationTimestamp"] = cur_meta["creationTimestamp"]
            meta["resourceVersion"] = cur_meta["resourceVersion"]
            if not rt.builtin and _without_meta(new) != _without_meta(cur):
                meta["generation"] = int(cur_meta.get("generation", 0)) + 1
        errs = self._validate(rt, new, cur, status_only=subresource == "status")
        if errs:
            raise invalid(rt.group, rt.kind, name, errs)
        if new == cur:
            return Result(self.render(rt, cur), 200, warnings)
        new = _canonical(rt, new)
        if opts.dry_run:
            return Result(self.render(rt, new), 200, warnings)
        stored = self.store.update(rt.storage_key, new, cur)
        return Result(self.render(rt, stored), 200, warnings)

    # ---------------------------------------------------------------- delete

    def delete(self, rt: ResourceType, namespace: str, name: str, options: dict[str, Any] | None = None,
               *, dry_run: bool = False) -> Result:
        options = options or {}
        ns = namespace if rt.namespaced else ""
        with self.store.lock:
            cur = self.store.get(rt.storage_key, ns, name)
            if cur is None:
                raise not_found(rt.group, rt.plural, name)
            pre = options.get("preconditions") or {}
            uid, rv = cur["metadata"]["uid"], cur["metadata"]["resourceVersion"]
            if pre.get("uid") and pre["uid"] != uid:
                raise conflict(rt.group, rt.plural, name,
                               f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {uid}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != rv:
                raise conflict(rt.group, rt.plural, name,
                               f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                               f"ResourceVersion in object meta: {rv}")
            gone = cur if dry_run else self.store.delete(rt.storage_key, ns, name)
            assert gone is not None
            if rt.storage_key == NAMESPACES_KEY:
                if not dry_run:
                    self.store.delete_namespace_contents(name)
                # The real server answers with the namespace, now Terminating (its contents go later).
                shown = json_copy(gone)
                shown["metadata"]["deletionTimestamp"] = now_rfc3339()
                shown.setdefault("status", {})["phase"] = "Terminating"
                return Result(self.render(rt, shown))
            if rt.extra.get("crd") and not dry_run and self._on_crd_deleted is not None:
                self._on_crd_deleted(gone)
        details: dict[str, Any] = {"name": name}
        if rt.group:
            details["group"] = rt.group
        details["kind"] = rt.plural
        details["uid"] = uid
        return Result(status_body(0, "", "", details, success=True))

    def delete_collection(self, rt: ResourceType, namespace: str | None, *, label_selector: str | None = None,
                          field_selector: str | None = None, dry_run: bool = False) -> Result:
        with self.store.lock:
            listing = self.list_collection(rt, namespace, label_selector=label_selector, field_selector=field_selector)
            for item in listing["items"]:
                m = item["metadata"]
                self.delete(rt, m.get("namespace", ""), m["name"], dry_run=dry_run)
        return Result(listing)

    # ---------------------------------------------------------------- CRD objects

    def _prepare_crd(self, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        versions = spec.get("versions") or [{"name": spec.get("version"), "storage": True}]
        stored = [v.get("name") for v in versions if v.get("storage")] or [versions[0].get("name")]
        now = obj["metadata"]["creationTimestamp"]
        obj["status"] = {
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": stored,
        }


def _canonical(rt: ResourceType, obj: Obj) -> Obj:
    obj["metadata"].setdefault("resourceVersion", "")  # keeps its place in key order; the store fills it
    ordered: Obj = canonical_order(obj, rt.schema if rt.builtin else None, struct=rt.builtin)
    if rt.builtin:
        ordered = {"kind": ordered.pop("kind"), "apiVersion": ordered.pop("apiVersion"), **ordered}
    return ordered


def _without_meta(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k != "metadata"}


def _go_json_kind(v: Any) -> str:
    return {"str": "string", "list": "array", "int": "number", "float": "number", "bool": "bool"}.get(
        type(v).__name__, "value")


def _validate_embedded(obj: Obj, rt: ResourceType) -> list[FieldError]:
    """x-kubernetes-embedded-resource objects need an apiVersion and a kind (objectmeta.Validate)."""
    errs: list[FieldError] = []
    for path, emb in embedded_objects(obj, rt.schema):
        for key in ("apiVersion", "kind"):
            if key not in emb:
                errs.append(FieldError(REQUIRED, f"{path}.{key}", detail="must not be empty"))
            elif not isinstance(emb[key], str) or not emb[key]:
                errs.append(FieldError(INVALID, f"{path}.{key}", emb[key], "must not be empty"))
    return errs


def too_old(requested: int, oldest: int) -> ApiError:
    return expired(f"too old resource version: {requested} ({oldest})")
