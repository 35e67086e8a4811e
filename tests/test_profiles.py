import tomllib

import pytest

from teleop_app.profiles import ProfileError, builtin_profiles, load_profile, parse_profile


def test_builtin_profiles_load():
    assert {"sim7", "koch", "so101"} <= set(builtin_profiles())
    sim = load_profile("sim7")
    assert sim.dof == 8 and sim.joint_names[-1] == "gripper" and sim.bus.kind == "sim"
    assert load_profile("koch").bus.kind == "dynamixel"
    assert load_profile("so101").bus.kind == "feetech"
    for name in builtin_profiles():
        p = load_profile(name)
        assert (p.lower() <= p.home()).all() and (p.home() <= p.upper()).all()


def _sim_dict():
    from teleop_app.profiles import BUILTIN_DIR
    return tomllib.loads((BUILTIN_DIR / "sim7.toml").read_text())


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["joints"][2].pop("upper"), r"joints\[2\] 'joint3': missing field 'upper'"),
    (lambda d: d["joints"][0].update(lower=3.0), r"'lower' \(3.0\) must be below 'upper'"),
    (lambda d: d["joints"][1].update(home=9.0), r"'home' \(9.0\) is outside"),
    (lambda d: d["joints"][1].update(max_speed="fast"), r"'max_speed' must be float"),
    (lambda d: d["bus"].update(kind="canbus"), r"bus: field 'kind' must be one of"),
    (lambda d: d.update(fps=100), r"'fps' must be within 1..50"),
    (lambda d: d["cameras"][0].update(kind="webcam"), r"cameras\[0\]: field 'kind'"),
    (lambda d: d.update(colour="red"), r"unknown field\(s\) \['colour'\]"),
    (lambda d: d["joints"][3].update(name="joint1"), r"duplicate joint names \['joint1'\]"),
    (lambda d: d.pop("gripper"), r"missing field 'gripper'"),
    (lambda d: d["workspace"].update(x=[1.0, 0.0]), r"workspace.x must be"),
])
def test_validation_names_the_bad_field(mutate, match):
    d = _sim_dict()
    mutate(d)
    with pytest.raises(ProfileError, match=match):
        parse_profile(d, "bad.toml")


def test_hardware_profile_needs_servo_ids():
    d = _sim_dict()
    d["bus"]["kind"] = "dynamixel"
    d["joints"][4].pop("servo_id")
    with pytest.raises(ProfileError, match=r"needs 'servo_id' on joints \['joint5'\]"):
        parse_profile(d, "x.toml")


def test_file_errors(tmp_path):
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*sim7"):
        load_profile("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "missing.toml")
