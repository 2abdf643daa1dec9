"""What a real kube-apiserver refuses in the objects Autopilot writes: the rules the fakes enforce.

The rules come from k8s.io/apimachinery ``pkg/util/validation`` (qualified names, label values,
DNS-1123 names), ``pkg/api/validation`` (ObjectMeta: names, ``generateName``, labels, the 256 KiB
annotation budget), k8s.io/kubernetes ``pkg/apis/core/validation`` (pod spec, containers,
resources, tolerations, node affinity, PersistentVolumeClaim, Node taints) and
``pkg/apis/batch/validation`` (Job), reduced to the fields Autopilot sends. ``FakeCluster`` and
the tests' stand-in API server refuse with these (422 ``Invalid``, 400 for a bad selector, for an
unknown field under strict field validation, and for a value of a JSON type the server's decoder
cannot read into its field), so a manifest our code builds that passes the fakes passes a real
server in those fields.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

# Kubernetes' name rules have one home, with the rest of our name validation.
from autopilot.names import is_dns1123_label, is_dns1123_subdomain, is_label_name, is_label_value

_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(?P<suffix>[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")
_SUFFIX = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50),
    "Ei": Decimal(2**60), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal("1e3"),
    "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"), "E": Decimal("1e18"),
}  # fmt: skip

# ObjectMeta: the sum of the annotations' keys and values (TotalAnnotationSizeLimitB).
ANNOTATIONS_LIMIT_BYTES = 256 * 1024
# generateName: the server keeps at most 58 characters of it and appends 5 random ones
# (names.SimpleNameGenerator, maxGeneratedNameLength = 63 - 5), from this alphabet (utilrand).
GENERATED_BASE_LIMIT = 58
_GENERATED_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
JOB_RESTART_POLICIES = ("OnFailure", "Never")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
# Resources the kubelet and scheduler know without a domain, or in kubernetes.io: the rest are
# extended resources (nvidia.com/gpu), which must be whole numbers with requests equal to limits.
_NATIVE_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "storage", "pods"})


def qualified_name_problems(text: object, path: str) -> list[str]:
    """``IsQualifiedName``: an optional DNS-1123 subdomain prefix and ``/``, then a name of at most 63."""
    if not isinstance(text, str):
        return [f"{path}: Invalid value: {text!r}: must be a string"]
    prefix, slash, name = text.rpartition("/")
    problems = []
    if slash and not is_dns1123_subdomain(prefix):
        problems.append(f"{path}: Invalid value: {text!r}: prefix part must be a lowercase RFC 1123 subdomain")
    if not is_label_name(name):
        problems.append(
            f"{path}: Invalid value: {text!r}: name part must consist of alphanumeric characters, '-', '_' or '.', "
            "start and end with an alphanumeric character, and be at most 63 characters"
        )
    return problems


def label_value_problems(text: object, path: str) -> list[str]:
    """``IsValidLabelValue``: empty, or at most 63 of ``[-A-Za-z0-9_.]`` with alphanumeric ends."""
    if not isinstance(text, str) or not is_label_value(text):
        return [f"{path}: Invalid value: {text!r}: a valid label value must be at most 63 characters of "
                "alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric character"]  # fmt: skip
    return []


def labels_problems(labels: object, path: str) -> list[str]:
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        return [f"{path}: Invalid value: must be an object of strings"]
    problems: list[str] = []
    for key, value in labels.items():
        problems += qualified_name_problems(key, path) + label_value_problems(value, f"{path}[{key}]")
    return problems


def annotations_problems(annotations: object, path: str) -> list[str]:
    """Keys are qualified names (checked lower-cased, as the server does); keys and values together at most 256 KiB."""
    if annotations is None:
        return []
    if not isinstance(annotations, Mapping) or not all(isinstance(v, str) for v in annotations.values()):
        return [f"{path}: Invalid value: annotation values must be strings"]
    problems: list[str] = []
    for key in annotations:
        problems += qualified_name_problems(key.lower() if isinstance(key, str) else key, path)
    size = sum(len(str(k).encode()) + len(v.encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_LIMIT_BYTES:
        problems.append(f"{path}: Too long: must have at most {ANNOTATIONS_LIMIT_BYTES} bytes")
    return problems


def generated_name(generate_name: str, rng: random.Random | None = None) -> str:
    """The name the API server makes of ``metadata.generateName``: its first 58 characters and 5 random ones."""
    pick = rng or random.Random()
    return generate_name[:GENERATED_BASE_LIMIT] + "".join(pick.choice(_GENERATED_ALPHABET) for _ in range(5))


def meta_problems(meta: object, *, name_rule: str = "subdomain") -> list[str]:
    """``ValidateObjectMeta`` for a create: a name (or a ``generateName`` to make one) valid by
    ``name_rule`` (``subdomain``, ``label`` or ``segment``: a path segment, as core/v1 Events),
    valid labels and annotations. Call it after the server has turned ``generateName`` into ``name``."""
    if not isinstance(meta, Mapping):
        return ["metadata: Required value"]
    name = meta.get("name")
    problems: list[str] = []
    if not name:
        problems.append("metadata.name: Required value: name or generateName is required")
    elif not isinstance(name, str):
        problems.append(f"metadata.name: Invalid value: {name!r}")
    elif name_rule == "label" and not is_dns1123_label(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 label (at most 63 characters)")
    elif name_rule == "subdomain" and not is_dns1123_subdomain(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain")
    elif name in (".", "..") or "/" in name or "%" in name:
        problems.append(f"metadata.name: Invalid value: {name!r}: may not contain '/' or '%' or be '.' or '..'")
    return (
        problems
        + labels_problems(meta.get("labels"), "metadata.labels")
        + annotations_problems(meta.get("annotations"), "metadata.annotations")
    )


# ---------------------------------------------------------------- selectors


def label_selector_problems(selector: str) -> list[str]:
    """Why ``labels.Parse`` refuses ``selector`` (the server answers 400): equality and existence
    requirements, ``key in (a,b)`` and ``key notin (a,b)``; keys qualified names, values label values."""
    problems: list[str] = []
    for part in _split_requirements(selector):
        term = part.strip()
        if not term:
            problems.append(f"labelSelector: Invalid value: {selector!r}: empty requirement")
            continue
        found = re.fullmatch(r"(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)", term)
        if found:
            problems += qualified_name_problems(found["key"], "labelSelector")
            for value in found["values"].split(","):
                problems += label_value_problems(value.strip(), "labelSelector")
            continue
        found = re.fullmatch(r"(?P<key>[^\s!=]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=]*)", term)
        if found:
            problems += qualified_name_problems(found["key"], "labelSelector")
            problems += label_value_problems(found["value"], "labelSelector")
            continue
        found = re.fullmatch(r"!?\s*(?P<key>[^\s!=()]+)", term)
        if found:
            problems += qualified_name_problems(found["key"], "labelSelector")
            continue
        problems.append(f"labelSelector: Invalid value: {term!r}: unable to parse requirement")
    return problems


def _split_requirements(selector: str) -> list[str]:
    """``selector`` split at the commas that are not inside ``( )``; an empty selector has none."""
    if not selector.strip():
        return []
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


# ---------------------------------------------------------------- quantities and resources


def quantity(text: object) -> Decimal | None:
    """A resource quantity (``100Mi``, ``10m``, ``8``) as a number; None when it is not one."""
    raw = str(text).strip() if isinstance(text, str | int) else ""
    found = _QUANTITY.fullmatch(raw)
    if not found:
        return None
    suffix = found["suffix"] or ""
    try:
        if len(suffix) > 1 and suffix[0] in "eE":  # an exponent; a bare "E" is the exa suffix
            return Decimal(raw)
        return Decimal(raw[: len(raw) - len(suffix)] or "0") * _SUFFIX.get(suffix, Decimal(1))
    except InvalidOperation:
        return None


def resources_problems(resources: object, path: str) -> list[str]:
    """A container's ``resources``: quantities parse, are not negative, requests do not exceed limits;
    extended resources (``nvidia.com/gpu``) are whole numbers, cannot be overcommitted (a request
    needs an equal limit)."""
    if resources is None:
        return []
    if not isinstance(resources, Mapping):
        return [f"{path}: Invalid value: must be an object"]
    problems: list[str] = []
    parsed: dict[str, dict[str, Decimal]] = {}
    for part in ("limits", "requests"):
        parsed[part] = {}
        for name, value in (resources.get(part) or {}).items():
            amount = quantity(value)
            where = f"{path}.{part}[{name}]"
            if amount is None:
                problems.append(f"{where}: Invalid value: {value!r}: quantities must match the regular expression")
                continue
            if amount < 0:
                problems.append(f"{where}: Invalid value: {value!r}: must be greater than or equal to 0")
            if _extended(name) and amount != amount.to_integral_value():
                problems.append(f"{where}: Invalid value: {value!r}: must be an integer")
            parsed[part][name] = amount
    for name, amount in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if _extended(name):
            if limit is None:
                problems.append(f"{path}.limits: Required value: Limit must be set for non overcommitable resources")
            elif limit != amount:
                problems.append(f"{path}.requests[{name}]: Invalid value: must be equal to {name} limit")
        elif limit is not None and amount > limit:
            problems.append(f"{path}.requests[{name}]: Invalid value: must be less than or equal to {name} limit")
    return problems


def _extended(name: str) -> bool:
    return name not in _NATIVE_RESOURCES and "/" in name and not name.split("/")[0].endswith("kubernetes.io")


# ---------------------------------------------------------------- pod spec


def tolerations_problems(tolerations: object, path: str) -> list[str]:
    """``validateTolerations``: key a qualified name (empty only with ``Exists``), ``Exists`` takes no
    value, an ``Equal`` value is a label value, a known effect, ``tolerationSeconds`` only with ``NoExecute``."""
    if tolerations is None:
        return []
    if not isinstance(tolerations, Sequence) or isinstance(tolerations, str):
        return [f"{path}: Invalid value: must be a list"]
    problems: list[str] = []
    for i, tol in enumerate(tolerations):
        where = f"{path}[{i}]"
        if not isinstance(tol, Mapping):
            problems.append(f"{where}: Invalid value: must be an object")
            continue
        # The server cannot even decode a field of the wrong JSON type (a 400 for the whole object).
        mistyped = [
            f"{where}.{field}: Invalid value: {tol[field]!r}: must be {'an integer' if wanted is int else 'a string'}"
            for field, wanted in _TOLERATION.items()
            if tol.get(field) is not None and not fits(tol[field], wanted)
        ]
        if mistyped:
            problems += mistyped
            continue
        key, operator = tol.get("key") or "", tol.get("operator") or "Equal"
        effect, value = tol.get("effect") or "", tol.get("value") or ""
        if key:
            problems += qualified_name_problems(key, f"{where}.key")
        elif operator != "Exists":
            problems.append(f"{where}.operator: Invalid value: {operator!r}: operator must be Exists when key is empty")
        if operator == "Exists" and value:
            problems.append(f"{where}.operator: Invalid value: {value!r}: value must be empty when operator is Exists")
        elif operator == "Equal":
            problems += label_value_problems(value, f"{where}.value")
        elif operator != "Exists":
            problems.append(f'{where}.operator: Unsupported value: {operator!r}: supported values: "Equal", "Exists"')
        if effect and effect not in TAINT_EFFECTS:
            problems.append(f"{where}.effect: Unsupported value: {effect!r}")
        if tol.get("tolerationSeconds") is not None and effect != "NoExecute":
            problems.append(f"{where}.effect: Invalid value: {effect!r}: effect must be 'NoExecute' when "
                            "`tolerationSeconds` is set")  # fmt: skip
    return problems


def _affinity_problems(affinity: object, path: str) -> list[str]:
    required = (((affinity or {}) if isinstance(affinity, Mapping) else {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required is None:
        return []
    terms = required.get("nodeSelectorTerms") or []
    where = f"{path}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    problems = [] if terms else [f"{where}: Required value: must have at least one node selector term"]
    for i, term in enumerate(terms):
        for j, field in enumerate(term.get("matchFields") or ()):
            at = f"{where}[{i}].matchFields[{j}]"
            if field.get("key") != "metadata.name":
                problems.append(f"{at}.key: Invalid value: {field.get('key')!r}: not a valid field selector key")
            if field.get("operator") not in ("In", "NotIn") or len(field.get("values") or ()) != 1:
                problems.append(f"{at}.values: Required value: must be only one value when `operator` is 'In' or "
                                "'NotIn' for node field selector")  # fmt: skip
        for j, expr in enumerate(term.get("matchExpressions") or ()):
            problems += qualified_name_problems(expr.get("key"), f"{where}[{i}].matchExpressions[{j}].key")
    return problems


def pod_spec_problems(spec: object, path: str, *, restart_policies: Sequence[str] = RESTART_POLICIES) -> list[str]:
    """``ValidatePodSpec`` for the fields Autopilot sets."""
    if not isinstance(spec, Mapping):
        return [f"{path}: Required value"]
    problems: list[str] = []
    policy = spec.get("restartPolicy") or "Always"  # the server's default, applied before validation
    if policy not in restart_policies:
        supported = ", ".join(f'"{p}"' for p in restart_policies)
        problems.append(f'{path}.restartPolicy: Unsupported value: "{policy}": supported values: {supported}')
    volumes = {str(v.get("name") or "") for v in spec.get("volumes") or ()}
    for i, volume in enumerate(spec.get("volumes") or ()):
        if not is_dns1123_label(str(volume.get("name") or "")):
            problems.append(f"{path}.volumes[{i}].name: Invalid value: {volume.get('name')!r}")
    containers = spec.get("containers") or []
    if not containers:
        problems.append(f"{path}.containers: Required value")
    seen: set[str] = set()
    for kind in ("initContainers", "containers"):
        for i, ctr in enumerate(spec.get(kind) or ()):
            where = f"{path}.{kind}[{i}]"
            name = str(ctr.get("name") or "")
            if not is_dns1123_label(name):
                problems.append(f"{where}.name: Invalid value: {name!r}: a lowercase RFC 1123 label")
            elif name in seen:
                problems.append(f"{where}.name: Duplicate value: {name!r}")
            seen.add(name)
            if not str(ctr.get("image") or "").strip():
                problems.append(f"{where}.image: Required value")
            problems += resources_problems(ctr.get("resources"), f"{where}.resources")
            for j, mount in enumerate(ctr.get("volumeMounts") or ()):
                if mount.get("name") not in volumes:
                    problems.append(f"{where}.volumeMounts[{j}].name: Not found: {mount.get('name')!r}")
                if not mount.get("mountPath"):
                    problems.append(f"{where}.volumeMounts[{j}].mountPath: Required value")
    node_name = spec.get("nodeName")
    if node_name and not is_dns1123_subdomain(str(node_name)):
        problems.append(f"{path}.nodeName: Invalid value: {node_name!r}")
    problems += labels_problems(spec.get("nodeSelector"), f"{path}.nodeSelector")
    problems += _affinity_problems(spec.get("affinity"), f"{path}.affinity")
    problems += tolerations_problems(spec.get("tolerations"), f"{path}.tolerations")
    return problems


# ---------------------------------------------------------------- objects


def _non_negative(spec: Mapping[str, Any], field: str, path: str, *, positive: bool = False) -> list[str]:
    value = spec.get(field)
    if value is None:
        return []
    if not isinstance(value, int) or isinstance(value, bool) or value < (1 if positive else 0):
        bound = "greater than 0" if positive else "greater than or equal to 0"
        return [f"{path}.{field}: Invalid value: {value!r}: must be {bound}"]
    return []


def job_problems(body: Mapping[str, Any]) -> list[str]:
    """``ValidateJob`` (batch/v1) for a create: the name also becomes the pods' ``job-name`` label, so it
    must fit a label value (63); restartPolicy ``Never`` or ``OnFailure``; counts and times not negative."""
    meta = body.get("metadata") or {}
    problems = meta_problems(meta)
    name = str(meta.get("name") or "")
    if name and len(name) > 63:
        problems.append(f"metadata.name: Invalid value: {name!r}: must be no more than 63 characters")
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return [*problems, "spec: Required value"]
    for field in ("backoffLimit", "parallelism", "completions", "ttlSecondsAfterFinished"):
        problems += _non_negative(spec, field, "spec")
    problems += _non_negative(spec, "activeDeadlineSeconds", "spec", positive=True)
    template = spec.get("template")
    if not isinstance(template, Mapping):
        return [*problems, "spec.template: Required value"]
    template_meta = template.get("metadata") or {}
    problems += labels_problems(template_meta.get("labels"), "spec.template.metadata.labels")
    problems += annotations_problems(template_meta.get("annotations"), "spec.template.metadata.annotations")
    problems += pod_spec_problems(template.get("spec"), "spec.template.spec", restart_policies=JOB_RESTART_POLICIES)
    return problems


def pod_problems(body: Mapping[str, Any]) -> list[str]:
    return meta_problems(body.get("metadata")) + pod_spec_problems(body.get("spec"), "spec")


def pvc_problems(body: Mapping[str, Any]) -> list[str]:
    """``ValidatePersistentVolumeClaim``: access modes known and present, a positive storage request,
    a storage class name that is a DNS-1123 subdomain."""
    problems = meta_problems(body.get("metadata"))
    spec = body.get("spec") or {}
    modes = spec.get("accessModes") or []
    if not modes:
        problems.append("spec.accessModes: Required value: at least 1 access mode is required")
    for mode in modes:
        if mode not in ACCESS_MODES:
            problems.append(f"spec.accessModes: Unsupported value: {mode!r}")
    storage = quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage", ""))
    if storage is None or storage <= 0:
        problems.append("spec.resources[storage]: Required value: a positive storage request is required")
    klass = spec.get("storageClassName")
    if klass and not is_dns1123_subdomain(str(klass)):
        problems.append(f"spec.storageClassName: Invalid value: {klass!r}")
    return problems


def node_problems(node: Mapping[str, Any]) -> list[str]:
    """``ValidateNodeUpdate`` in the fields we write: labels, annotations, ``spec.unschedulable``, taints."""
    meta = node.get("metadata") or {}
    problems = labels_problems(meta.get("labels"), "metadata.labels")
    problems += annotations_problems(meta.get("annotations"), "metadata.annotations")
    spec = node.get("spec") or {}
    if "unschedulable" in spec and not isinstance(spec["unschedulable"], bool):
        problems.append(f"spec.unschedulable: Invalid value: {spec['unschedulable']!r}: must be a boolean")
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate(spec.get("taints") or ()):
        key, effect, value = taint.get("key", ""), taint.get("effect", ""), taint.get("value", "")
        problems += qualified_name_problems(key, f"spec.taints[{i}].key")
        if effect not in TAINT_EFFECTS:
            problems.append(f'spec.taints[{i}].effect: Unsupported value: "{effect}": supported values: '
                            '"NoExecute", "NoSchedule", "PreferNoSchedule"')  # fmt: skip
        problems += label_value_problems(value, f"spec.taints[{i}].value")
        if (key, effect) in seen:
            problems.append(
                f"spec.taints: Duplicate value: taints must be unique by key and effect pair ({key}:{effect})"
            )
        seen.add((key, effect))
    return problems


def create_problems(kind: str, body: Mapping[str, Any]) -> list[str]:
    """Why the server refuses to create ``body`` (its ``generateName`` already made a ``name``)."""
    if kind == "Job":
        return job_problems(body)
    if kind == "Pod":
        return pod_problems(body)
    if kind == "PersistentVolumeClaim":
        return pvc_problems(body)
    if kind == "Event":  # core/v1 Events: any name that is a path segment (ValidateObjectMetaAccessor)
        return meta_problems(body.get("metadata"), name_rule="segment")
    return meta_problems(body.get("metadata"))


# ---------------------------------------------------------------- Pod Security Admission

# The namespace label the PodSecurity admission plugin enforces (k8s.io/pod-security-admission/api):
# privileged (no check), baseline, restricted. A pod that violates the level is refused with 403 Forbidden;
# a workload (a Job) is admitted and its pods are refused, which the Job controller reports as FailedCreate.
PSA_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PSA_LEVELS = ("privileged", "baseline", "restricted")
# policy/check_capabilities_baseline.go: what baseline lets a container add.
_BASELINE_CAPABILITIES = frozenset(
    "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID "
    "SYS_CHROOT".split()
)
# policy/check_sysctls.go (1.32 list).
_SAFE_SYSCTLS = frozenset(
    "kernel.shm_rmid_forced net.ipv4.ip_local_port_range net.ipv4.ip_unprivileged_port_start "
    "net.ipv4.tcp_syncookies net.ipv4.ping_group_range net.ipv4.ip_local_reserved_ports net.ipv4.tcp_keepalive_time "
    "net.ipv4.tcp_fin_timeout net.ipv4.tcp_keepalive_intvl net.ipv4.tcp_keepalive_probes".split()
)
# policy/check_restrictedVolumes.go: the only volume sources restricted admits.
_RESTRICTED_VOLUMES = frozenset(
    "configMap csi downwardAPI emptyDir ephemeral persistentVolumeClaim projected secret".split()
)


def pod_security_violations(spec: Mapping[str, Any], level: str) -> list[str]:
    """What the PodSecurity admission plugin says ``spec`` (a pod spec) violates at ``level``, each as it
    words it (``hostPath volumes (volume "kmsg")``); empty when the pod is admitted. The checks of
    k8s.io/pod-security-admission ``policy/``, latest version, for the fields a pod spec of ours can carry."""
    if level not in PSA_LEVELS:
        raise ValueError(f"not a Pod Security level: {level!r}")
    if level == "privileged":
        return []
    pod_sc: Mapping[str, Any] = spec.get("securityContext") or {}
    containers = [c for key in ("initContainers", "containers") for c in spec.get(key) or () if isinstance(c, Mapping)]

    def sc(c: Mapping[str, Any]) -> Mapping[str, Any]:
        return c.get("securityContext") or {}

    out: list[str] = []
    host = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k) is True]
    if host:
        out.append(f"host namespaces ({', '.join(host)})")
    privileged = [c.get("name") for c in containers if sc(c).get("privileged") is True]
    if privileged:
        out.append(f"privileged ({_containers(privileged)} must not set securityContext.privileged=true)")
    added = [
        (c.get("name"), cap)
        for c in containers
        for cap in (sc(c).get("capabilities") or {}).get("add") or ()
        if cap not in _BASELINE_CAPABILITIES
    ]
    if added:
        caps = ", ".join(sorted({f'"{cap}"' for _, cap in added}))
        names = _containers([n for n, _ in added])
        out.append(f"non-default capabilities ({names} must not include {caps} in securityContext.capabilities.add)")
    host_paths = [v.get("name") for v in spec.get("volumes") or () if isinstance(v, Mapping) and "hostPath" in v]
    if host_paths:
        out.append(f"hostPath volumes ({_volumes(host_paths)})")
    ports = [
        (c.get("name"), p.get("hostPort"))
        for c in containers
        for p in c.get("ports") or ()
        if isinstance(p, Mapping) and p.get("hostPort")
    ]
    if ports:
        out.append(f"hostPort ({', '.join(f'container {n!r} uses hostPort {p}' for n, p in ports)})")
    sysctls = [s.get("name") for s in pod_sc.get("sysctls") or () if s.get("name") not in _SAFE_SYSCTLS]
    if sysctls:
        out.append(f"forbidden sysctls ({', '.join(map(str, sysctls))})")
    seccomp_types = [str((pod_sc.get("seccompProfile") or {}).get("type") or "")] + [
        str((sc(c).get("seccompProfile") or {}).get("type") or "") for c in containers
    ]
    if "Unconfined" in seccomp_types:
        out.append('seccompProfile (type "Unconfined" is forbidden)')
    if level == "baseline":
        return out
    restricted_volumes = [
        (v.get("name"), kind)
        for v in spec.get("volumes") or ()
        if isinstance(v, Mapping)
        for kind in v
        if kind != "name" and kind not in _RESTRICTED_VOLUMES
    ]
    if restricted_volumes:
        listed = ", ".join(f'volume "{n}" uses restricted volume type "{k}"' for n, k in restricted_volumes)
        out.append(f"restricted volume types ({listed})")
    escalating = [c.get("name") for c in containers if sc(c).get("allowPrivilegeEscalation") is not False]
    if escalating:
        out.append(
            f"allowPrivilegeEscalation != false ({_containers(escalating)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    undropped = [
        c.get("name") for c in containers if "ALL" not in ((sc(c).get("capabilities") or {}).get("drop") or ())
    ]
    extra = [
        (c.get("name"), cap)
        for c in containers
        for cap in (sc(c).get("capabilities") or {}).get("add") or ()
        if cap != "NET_BIND_SERVICE"
    ]
    if undropped or extra:
        parts = [f'{_containers(undropped)} must set securityContext.capabilities.drop=["ALL"]'] if undropped else []
        if extra:
            caps = ", ".join(sorted({f'"{cap}"' for _, cap in extra}))
            parts.append(
                f"{_containers([n for n, _ in extra])} must not include {caps} in securityContext.capabilities.add"
            )
        out.append(f"unrestricted capabilities ({'; '.join(parts)})")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    not_non_root = [
        c.get("name")
        for c in containers
        if sc(c).get("runAsNonRoot") is False or (not pod_non_root and sc(c).get("runAsNonRoot") is not True)
    ]
    if not_non_root or pod_sc.get("runAsNonRoot") is False:
        who = _containers(not_non_root) if not_non_root else "pod"
        out.append(f"runAsNonRoot != true ({who} must set securityContext.runAsNonRoot=true)")
    root = ["pod"] if pod_sc.get("runAsUser") == 0 else []
    root += [_containers([c.get("name")]) for c in containers if sc(c).get("runAsUser") == 0]
    if root:
        out.append(f"runAsUser=0 ({' and '.join(root)} must not set runAsUser=0)")
    pod_seccomp = seccomp_types[0] in ("RuntimeDefault", "Localhost")
    unconfined = [
        c.get("name")
        for c in containers
        if (t := str((sc(c).get("seccompProfile") or {}).get("type") or "")) not in ("RuntimeDefault", "Localhost")
        and (t or not pod_seccomp)
    ]
    if unconfined:
        out.append(
            f"seccompProfile ({_containers(unconfined)} must set securityContext.seccompProfile.type to "
            '"RuntimeDefault" or "Localhost")'
        )
    return out


def pod_security_refusal(spec: Mapping[str, Any], level: str) -> str:
    """The 403's reason, ``violates PodSecurity "<level>:latest": ...`` ('' when ``spec`` is admitted)."""
    found = pod_security_violations(spec, level)
    return f'violates PodSecurity "{level}:latest": {", ".join(found)}' if found else ""


# ResourceQuota admission (plugin/pkg/admission/resourcequota, the pod evaluator's Constraints): a quota that
# tracks a compute resource refuses a pod one of whose containers does not say it. Requests are checked after
# defaulting, which copies a container's limits into requests it leaves out.
_QUOTA_COMPUTE = {
    "cpu": ("requests", "cpu"),
    "requests.cpu": ("requests", "cpu"),
    "memory": ("requests", "memory"),
    "requests.memory": ("requests", "memory"),
    "limits.cpu": ("limits", "cpu"),
    "limits.memory": ("limits", "memory"),
}


def quota_refusal(quota: str, hard: Sequence[str], spec: Mapping[str, Any]) -> str:
    """Why ResourceQuota ``quota`` (tracking the resources ``hard`` names) refuses a pod of ``spec``: ``failed
    quota: <quota>: must specify <resource> for: <containers>`` ('' when it is admitted as far as saying goes;
    usage against the hard limits is not modelled)."""
    containers = [c for key in ("initContainers", "containers") for c in spec.get(key) or () if isinstance(c, Mapping)]
    parts: list[str] = []
    for key in sorted(k for k in hard if k in _QUOTA_COMPUTE):
        field, resource = _QUOTA_COMPUTE[key]
        lacking = []
        for c in containers:
            res = c.get("resources") or {}
            limits = res.get("limits") or {}
            given = limits if field == "limits" else {**limits, **(res.get("requests") or {})}
            if resource not in given:
                lacking.append(str(c.get("name")))
        if lacking:
            parts.append(f"{key} for: {','.join(lacking)}")
    return f"failed quota: {quota}: must specify {'; '.join(parts)}" if parts else ""


def _containers(names: Sequence[object]) -> str:
    unique = list(dict.fromkeys(str(n) for n in names))
    quoted = ", ".join(f'"{n}"' for n in unique)
    return f"container {quoted}" if len(unique) == 1 else f"containers {quoted}"


def _volumes(names: Sequence[object]) -> str:
    unique = list(dict.fromkeys(str(n) for n in names))
    quoted = ", ".join(f'"{n}"' for n in unique)
    return f"volume {quoted}" if len(unique) == 1 else f"volumes {quoted}"


# ---------------------------------------------------------------- strict field validation

# The fields of the objects Autopilot writes, as the API server's schema knows them (k8s.io/api core/v1,
# batch/v1, resource.k8s.io): a dict names an object's fields, MAP a map of free keys, [x] a list of x, ANY
# a value that is not walked further. With ``fieldValidation=Strict`` (what the client sends) a field that is
# not here is a 400 ``strict decoding error: unknown field``, instead of being dropped without a word (the
# server's default, Warn, only adds a warning header).
ANY: Any = None
MAP = "map"
_META = dict.fromkeys(
    ("name generateName namespace selfLink uid resourceVersion generation creationTimestamp deletionTimestamp "
     "deletionGracePeriodSeconds ownerReferences finalizers managedFields").split()
) | {"labels": MAP, "annotations": MAP}  # fmt: skip
_TYPE = {"apiVersion": ANY, "kind": ANY}


@dataclasses.dataclass(frozen=True)
class TimeLeaf:
    """A leaf of type ``metav1.Time`` (``micro``: ``metav1.MicroTime``). Its decoder takes a JSON string that Go's
    ``time.Parse`` reads with ``layout`` (RFC 3339; MicroTime: with exactly six fractional digits) or null; anything
    else, an empty string included, is a 400 before validation (k8s.io/apimachinery pkg/apis/meta/v1 time.go,
    micro_time.go)."""

    layout: str
    pattern: re.Pattern[str]

    def problem(self, value: object) -> str | None:
        """Why the decoder refuses ``value`` (a JSON value, never null), or None."""
        if not isinstance(value, str):
            return f"cannot unmarshal {_json_kind(value)} into a field of type string"
        found = self.pattern.fullmatch(value)
        try:
            if found is None:
                raise ValueError
            year, month, day, hour, minute, second = (int(found[g]) for g in ("y", "mo", "d", "h", "mi", "s"))
            datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 - only its ranges are asked
            if found["zh"] and (int(found["zh"]) > 23 or int(found["zm"]) > 59):
                raise ValueError
        except ValueError:
            return f'parsing time "{value}" as "{self.layout}"'
        return None


_STAMP = r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})T(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})"
_ZONE = r"(?:Z|[+-](?P<zh>\d{2}):(?P<zm>\d{2}))"
TIME = TimeLeaf("2006-01-02T15:04:05Z07:00", re.compile(_STAMP + r"(?:\.\d+)?" + _ZONE))
MICRO_TIME = TimeLeaf("2006-01-02T15:04:05.000000Z07:00", re.compile(_STAMP + r"\.\d{6}" + _ZONE))
# A leaf that is a type is one the server's decoder holds to its JSON type (Go's encoding/json): a string where an
# int64 is wanted is a 400 ``json: cannot unmarshal string into Go struct field ...`` before any validation, whatever
# fieldValidation says. Typed here: the leaves a user's setting can reach (tolerations) and the Job's counts.
_TOLERATION: dict[str, Any] = {"key": str, "operator": str, "value": str, "effect": str, "tolerationSeconds": int}
_SELECTOR_TERM = {"matchExpressions": [dict.fromkeys(("key", "operator", "values"))]}
_SELECTOR_TERM["matchFields"] = _SELECTOR_TERM["matchExpressions"]
_CONTAINER: dict[str, Any] = dict.fromkeys(
    ("name image command args workingDir ports envFrom resizePolicy restartPolicy volumeDevices livenessProbe "
     "readinessProbe startupProbe lifecycle terminationMessagePath terminationMessagePolicy imagePullPolicy stdin "
     "stdinOnce tty").split()
) | {
    "env": [{"name": ANY, "value": ANY, "valueFrom": {
        "fieldRef": {"apiVersion": ANY, "fieldPath": ANY}, "resourceFieldRef": ANY, "configMapKeyRef": ANY,
        "secretKeyRef": ANY,
    }}],
    "resources": {"limits": MAP, "requests": MAP, "claims": ANY},
    "volumeMounts": [dict.fromkeys(
        ("name readOnly recursiveReadOnly mountPath subPath mountPropagation subPathExpr").split()
    )],
    "securityContext": dict.fromkeys(
        ("privileged seLinuxOptions windowsOptions runAsUser runAsGroup runAsNonRoot readOnlyRootFilesystem "
         "allowPrivilegeEscalation procMount seccompProfile appArmorProfile").split()
    ) | {"capabilities": {"add": ANY, "drop": ANY}},
}  # fmt: skip
_POD_SPEC: dict[str, Any] = dict.fromkeys(
    ("ephemeralContainers terminationGracePeriodSeconds activeDeadlineSeconds dnsPolicy serviceAccountName "
     "serviceAccount automountServiceAccountToken nodeName hostNetwork hostPID hostIPC shareProcessNamespace "
     "imagePullSecrets hostname subdomain schedulerName hostAliases priorityClassName priority dnsConfig "
     "readinessGates runtimeClassName enableServiceLinks preemptionPolicy overhead topologySpreadConstraints "
     "setHostnameAsFQDN os hostUsers schedulingGates resourceClaims resources restartPolicy").split()
) | {
    "nodeSelector": MAP,
    "containers": [_CONTAINER],
    "initContainers": [_CONTAINER],
    "tolerations": [_TOLERATION],
    "volumes": [{"name": ANY, "persistentVolumeClaim": {"claimName": ANY, "readOnly": ANY}, "emptyDir": ANY,
                 "hostPath": ANY, "configMap": ANY, "secret": ANY, "projected": ANY, "ephemeral": ANY}],
    "securityContext": dict.fromkeys(
        ("seLinuxOptions windowsOptions runAsUser runAsGroup runAsNonRoot supplementalGroups "
         "supplementalGroupsPolicy fsGroup fsGroupChangePolicy sysctls appArmorProfile seLinuxChangePolicy").split()
    ) | {"seccompProfile": {"type": ANY, "localhostProfile": ANY}},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_SELECTOR_TERM]},
            "preferredDuringSchedulingIgnoredDuringExecution": ANY,
        },
        "podAffinity": ANY,
        "podAntiAffinity": ANY,
    },
}  # fmt: skip
_TAINT = {"key": str, "value": str, "effect": str, "timeAdded": TIME}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Job": _TYPE | {"metadata": _META, "status": ANY, "spec": dict.fromkeys(
        ("podFailurePolicy successPolicy backoffLimitPerIndex maxFailedIndexes selector manualSelector "
         "completionMode suspend podReplacementPolicy managedBy").split()
    ) | dict.fromkeys(
        ("parallelism completions activeDeadlineSeconds backoffLimit ttlSecondsAfterFinished").split(), int
    ) | {"template": {"metadata": _META, "spec": _POD_SPEC}}},
    "Pod": _TYPE | {"metadata": _META, "spec": _POD_SPEC, "status": ANY},
    "PersistentVolumeClaim": _TYPE | {"metadata": _META, "status": ANY, "spec": dict.fromkeys(
        ("accessModes selector volumeName storageClassName volumeMode dataSource dataSourceRef "
         "volumeAttributesClassName").split()
    ) | {"resources": {"limits": MAP, "requests": MAP}}},
    "Event": _TYPE | dict.fromkeys(
        ("reason message count type series action related reportingComponent reportingInstance").split()
    ) | {"firstTimestamp": TIME, "lastTimestamp": TIME, "eventTime": MICRO_TIME} | {
        "metadata": _META,
        "involvedObject": dict.fromkeys(("kind namespace name uid apiVersion resourceVersion fieldPath").split()),
        "source": {"component": ANY, "host": ANY},
    },
    "Node": _TYPE | {
        "metadata": _META,
        "spec": dict.fromkeys(("podCIDR podCIDRs providerID unschedulable configSource externalID").split())
        | {"taints": [_TAINT]},
        "status": {"conditions": [dict.fromkeys(
            ("type status reason message").split()
        ) | {"lastHeartbeatTime": TIME, "lastTransitionTime": TIME}]} | dict.fromkeys(
            ("capacity allocatable phase addresses daemonEndpoints nodeInfo images volumesInUse volumesAttached "
             "config runtimeHandlers features").split()
        ),
    },
    "DeviceTaintRule": _TYPE | {"metadata": _META, "status": ANY, "spec": {
        "deviceSelector": dict.fromkeys(("driver", "pool", "device")), "taint": _TAINT,
    }},
}  # fmt: skip
# v1alpha3 of Kubernetes 1.33/1.34 also had these selector fields (dropped later).
_ALPHA_SELECTOR = dict.fromkeys(("driver", "pool", "device", "deviceClassName", "selectors"))


def unknown_fields(kind: str, body: object, version: str = "") -> list[str]:
    """The fields of ``body`` (a ``kind`` or a patch of one) the server's schema does not know, as paths."""
    schema = SCHEMAS[kind]
    if kind == "DeviceTaintRule" and version == "v1alpha3":
        schema = schema | {"spec": schema["spec"] | {"deviceSelector": _ALPHA_SELECTOR}}
    return _unknown(body, schema, "")


def _unknown(value: object, schema: Any, path: str) -> list[str]:
    if schema is ANY or schema == MAP or isinstance(schema, type | TimeLeaf) or value is None:
        return []
    if isinstance(schema, list):
        items = value if isinstance(value, list) else []
        return [found for i, item in enumerate(items) for found in _unknown(item, schema[0], f"{path}[{i}]")]
    if not isinstance(value, Mapping):
        return []
    problems: list[str] = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in schema:
            problems.append(where)
        else:
            problems += _unknown(item, schema[key], where)
    return problems


# Go's names of the types a typed leaf decodes into, and JSON's of what a value is.
_GO_TYPES: dict[type, str] = {str: "string", int: "int64", bool: "bool"}


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def fits(value: object, wanted: type) -> bool:
    """Whether the JSON ``value`` decodes into a Go field of ``wanted`` (an int64 takes no ``true`` and no ``1.5``
    or ``30.0``: ``encoding/json`` refuses a number with a fraction or an exponent for an integer)."""
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, wanted)


def wrong_types(kind: str, body: object) -> list[str]:
    """The typed leaves of ``body`` (a ``kind`` or a patch of one) whose JSON type the server cannot decode, each as
    ``<path>: cannot unmarshal <json> into a field of type <go type>`` (a time: ``parsing time ...``): the server
    answers 400 BadRequest."""
    return _wrong(body, SCHEMAS[kind], "")


def _wrong(value: object, schema: Any, path: str) -> list[str]:
    if value is None or schema is ANY or schema == MAP:  # null decodes into any field: its zero value
        return []
    if isinstance(schema, type):
        if fits(value, schema):
            return []
        return [f"{path}: cannot unmarshal {_json_kind(value)} into a field of type {_GO_TYPES[schema]}"]
    if isinstance(schema, TimeLeaf):
        problem = schema.problem(value)
        return [f"{path}: {problem}"] if problem else []
    if isinstance(schema, list):
        items = value if isinstance(value, list) else []
        return [found for i, item in enumerate(items) for found in _wrong(item, schema[0], f"{path}[{i}]")]
    if not isinstance(value, Mapping):
        return []
    return [
        found
        for key, item in value.items()
        if key in schema
        for found in _wrong(item, schema[key], f"{path}.{key}" if path else str(key))
    ]
