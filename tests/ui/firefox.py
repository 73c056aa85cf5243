"""Headless Firefox (Debian's firefox-esr) driven through Marionette, its own
automation protocol, with Mozilla's client (marionette-driver).

Playwright's Firefox support needs either Playwright's patched build (not
installable here) or a WebDriver BiDi command that ESR 153 lacks
(emulation.setMediaFeaturesOverride), so the Firefox check uses Marionette.

The profile sends nothing off the machine: every proxy points at a closed
loopback port except for 127.0.0.1 itself, and the background services that
phone home (updates, telemetry, safe browsing, remote settings, push,
captive-portal and connectivity checks) are off.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..servers import free_port

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox") or "/usr/bin/firefox-esr"
DEAD = "http://127.0.0.1:9/"  # the discard port: nothing listens there

PREFS: dict[str, object] = {
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.socks": "127.0.0.1",
    "network.proxy.socks_port": 9,
    "network.proxy.socks_remote_dns": True,
    "network.proxy.no_proxies_on": "127.0.0.1",
    "network.proxy.allow_hijacking_localhost": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.search.update": False,
    "browser.region.update.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.startup.page": 0,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "dom.push.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "services.settings.server": DEAD,
    "media.gmp-manager.url": DEAD,
}


def available() -> bool:
    return Path(FIREFOX).exists()


def _user_js(prefs: dict[str, object]) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v) if isinstance(v, int) else f'"{v}"'

    return "".join(f'user_pref("{k}", {value(v)});\n' for k, v in prefs.items())


@contextlib.contextmanager
def firefox(timeout: float = 60) -> Iterator[object]:
    """A Marionette session on a fresh headless Firefox; closed on exit."""
    from marionette_driver.marionette import Marionette

    profile = Path(tempfile.mkdtemp(prefix="waypost-firefox-"))
    port = free_port()
    (profile / "user.js").write_text(_user_js({**PREFS, "marionette.port": port}))
    proc = subprocess.Popen(
        [FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Marionette(host="127.0.0.1", port=port)
    try:
        client.start_session(timeout=timeout)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.delete_session()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
