"""manifest.yml is a valid Slack app manifest that lists everything the code uses."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = yaml.safe_load((ROOT / "manifest.yml").read_text())
HANDLERS = "\n".join(p.read_text() for p in (ROOT / "handlers").glob("*.py"))


def test_manifest_has_the_required_sections():
    assert MANIFEST["_metadata"]["major_version"] == 1
    assert MANIFEST["display_information"]["name"] == "authguard"
    assert MANIFEST["features"]["bot_user"]["display_name"]
    assert MANIFEST["settings"]["socket_mode_enabled"] is True
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] is True


def test_every_slash_command_in_the_code_is_declared():
    declared = {c["command"] for c in MANIFEST["features"]["slash_commands"]}
    used = set(re.findall(r'COMMAND = "(/[a-z-]+)"', HANDLERS))
    assert used and used <= declared


def test_every_event_the_code_listens_to_is_subscribed():
    subscribed = set(MANIFEST["settings"]["event_subscriptions"]["bot_events"])
    used = set(re.findall(r'app\.event\("([a-z_]+)"', HANDLERS))
    expected = {"message.im" if name == "message" else name for name in used}
    assert expected <= subscribed


def test_scopes_cover_the_web_api_methods_used_and_no_more():
    scopes = set(MANIFEST["oauth_config"]["scopes"]["bot"])
    needed = {"commands", "app_mentions:read", "im:history"}
    if re.search(r"chat_postMessage|chat_update|say\(|respond\(", HANDLERS):
        needed.add("chat:write")
    if "usergroups_users_list" in HANDLERS:
        needed.add("usergroups:read")
    assert needed <= scopes
    assert scopes - needed <= {"usergroups:read"}  # kept for approver groups
