"""A genuine Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager on loopback.

Nothing here is emulated: the binaries are the upstream ones (see ../shared/kube-assets/README.md), found as
controller-runtime's envtest finds them: in `$KUBEBUILDER_ASSETS`, else in `.venv/kube-assets` (`make tools` unpacks
them there). Certificates are generated per run; RBAC is on and anonymous access off, so every client needs a real
credential. There is no scheduler and no kubelet: the test kubelet (support/kubelet.py) binds and runs pods.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
ASSETS_HELP = (
    "the control plane's binaries: `make tools` unpacks them from ../shared/kube-assets into .venv/kube-assets; "
    "elsewhere `setup-envtest use -p path 1.36.x` (controller-runtime) prints a folder for KUBEBUILDER_ASSETS"
)
SERVICE_RANGE = "10.96.0.0/24"


def assets_dir() -> Path | None:
    """Where the binaries are; None when neither $KUBEBUILDER_ASSETS nor .venv/kube-assets holds them.

    Raises FileNotFoundError when KUBEBUILDER_ASSETS is set but incomplete (a setup mistake, not a missing option).
    """
    given = os.environ.get("KUBEBUILDER_ASSETS")
    folder = Path(given) if given else ROOT / ".venv" / "kube-assets"
    missing = [b for b in BINARIES if not (folder / b).is_file()]
    if not missing:
        return folder
    if given:
        raise FileNotFoundError(f"KUBEBUILDER_ASSETS={given} lacks {', '.join(missing)}: {ASSETS_HELP}")
    return None


@dataclass
class Credential:
    cert: bytes  # PEM
    key: bytes  # PEM


class Authority:
    """A throwaway CA that signs the serving certificate and the client certificates (EC P-256: fast to make)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kuberl-test-ca")])
        self.cert = (
            self._builder(name, self.key.public_key())
            .issuer_name(name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @staticmethod
    def _builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def issue(self, common_name: str, groups: tuple[str, ...] = (), server: bool = False) -> Credential:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        )
        builder = self._builder(subject, key.public_key()).issuer_name(self.cert.subject)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            names: list[x509.GeneralName] = [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes.default.svc"),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Credential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ControlPlane:
    """`start()` (about 10-40 s on two cores), then `url`, `kubeconfig` (admin, certificates embedded as kind and
    kubeadm write them), `user_kubeconfig()`; `stop()` at the end. Each component logs to `root/<name>.log`."""

    def __init__(self, assets: Path, root: Path) -> None:
        self.assets, self.root = assets, root
        self.ca = Authority()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = root / "admin.kubeconfig"

    def start(self, timeout: float = 120) -> ControlPlane:
        self.root.mkdir(parents=True, exist_ok=True)
        files = self._write_certificates()
        try:
            self._start_etcd()
            self._start_apiserver(files)
            self._wait_ready(timeout)
            self._start_controller_manager(files)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def user_kubeconfig(self, target: Path, user: str, *, token: str | None = None, namespace: str = "default") -> Path:
        """A kubeconfig of `user`: a bearer token when given, else a client certificate for that user name (embedded,
        as `certificate-authority-data`, `client-certificate-data` and `client-key-data`)."""
        return self._kubeconfig(target, user, self.ca.issue(user) if token is None else token, namespace)

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    # -- phases of start()

    def _write_certificates(self) -> dict[str, Path]:
        files: dict[str, Path] = {}

        def write(name: str, data: bytes) -> None:
            files[name] = self.root / name
            files[name].write_bytes(data)

        write("ca.crt", self.ca.pem)
        write("ca.key", self.ca.key_pem)
        serving = self.ca.issue("kube-apiserver", server=True)
        write("apiserver.crt", serving.cert)
        write("apiserver.key", serving.key)
        service_accounts = ec.generate_private_key(ec.SECP256R1())
        write("sa.key", _key_pem(service_accounts))
        write(
            "sa.pub",
            service_accounts.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        admin = self.ca.issue("kuberl-test-admin", groups=("system:masters",))
        self._kubeconfig(self.kubeconfig, "admin", admin)
        kcm = self.ca.issue("system:kube-controller-manager")
        files["kcm.kubeconfig"] = self._kubeconfig(self.root / "kcm.kubeconfig", "kcm", kcm)
        return files

    def _kubeconfig(self, target: Path, user: str, auth: Credential | str, namespace: str = "default") -> Path:
        """A kubeconfig with everything embedded, as kind and kubeadm write them; `auth` a certificate or a token."""
        if isinstance(auth, str):
            credentials = {"token": auth}
        else:
            credentials = {"client-certificate-data": _b64(auth.cert), "client-key-data": _b64(auth.key)}
        cluster = {"server": self.url, "certificate-authority-data": _b64(self.ca.pem)}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": namespace}}],
            "current-context": "test",
        }
        target.write_text(yaml.safe_dump(config))
        return target

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [str(self.assets / name), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _start_etcd(self) -> None:
        client, peer = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer_port}"
        data = self.root / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        self._spawn(
            "etcd",
            [
                "--name=test",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                "--unsafe-no-fsync",  # a test's etcd: its data dies with it
            ],
        )

    def _start_apiserver(self, files: dict[str, Path]) -> None:
        self._spawn(
            "kube-apiserver",
            [
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--tls-cert-file={files['apiserver.crt']}",
                f"--tls-private-key-file={files['apiserver.key']}",
                f"--client-ca-file={files['ca.crt']}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={files['sa.pub']}",
                f"--service-account-signing-key-file={files['sa.key']}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )

    def _start_controller_manager(self, files: dict[str, Path]) -> None:
        kubeconfig = str(files["kcm.kubeconfig"])
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={files['sa.key']}",
                f"--root-ca-file={files['ca.crt']}",
                f"--cluster-signing-cert-file={files['ca.crt']}",
                f"--cluster-signing-key-file={files['ca.key']}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        credential = self.root / "admin.pem"
        admin = yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]
        credential.write_bytes(
            base64.b64decode(admin["client-certificate-data"]) + base64.b64decode(admin["client-key-data"])
        )
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.root / "ca.crt"))
        context.load_cert_chain(str(credential))
        last = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError as error:
                last = str(error)
            time.sleep(0.5)
        raise TimeoutError(f"kube-apiserver not ready after {timeout:.0f}s ({last}):\n{self.log('kube-apiserver')}")
