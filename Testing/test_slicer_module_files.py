"""The Slicer extension's files, checked without Slicer: ACAT.py against its .ui file and parameter
node, the CMake lists against the tree (and a CMake configure against a stand-in Slicer), the
extension metadata and icons."""
import ast
import json
import py_compile
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "ACATSlicer"
ACAT_PY = MODULE / "ACAT.py"
UI_FILE = MODULE / "Resources" / "UI" / "ACAT.ui"


def ui_widgets():
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def cmake_list(text, name):
    m = re.search(r"set\(\s*%s\s+(.*?)\)" % re.escape(name), text, re.S)
    assert m, f"set({name} ...) not found"
    items = [line.split("#", 1)[0].strip() for line in m.group(1).splitlines()]
    return [i.replace("${MODULE_NAME}", "ACAT") for i in items if i]


def test_acat_py_byte_compiles(tmp_path):
    py_compile.compile(str(ACAT_PY), cfile=str(tmp_path / "ACAT.pyc"), doraise=True)
    for path in (MODULE / "ACATLib").glob("*.py"):
        py_compile.compile(str(path), cfile=str(tmp_path / (path.stem + ".pyc")), doraise=True)


def test_every_ui_name_used_in_acat_py_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", ACAT_PY.read_text()))
    assert used, "ACAT.py uses no self.ui widgets?"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"ACAT.py uses widgets missing from ACAT.ui: {missing}"


def parameter_node_fields():
    tree = ast.parse(ACAT_PY.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in ACAT.py")


def test_ui_parameter_bindings_name_real_parameters():
    fields = parameter_node_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    assert bound, "no widget is bound to the parameter node"
    unknown = {w: p for w, p in bound.items() if p not in fields}
    assert not unknown, f"widgets bound to unknown parameters: {unknown}"
    for needed in ("inputVolume", "model", "modelFile", "device", "counterfactualSteps", "alpha", "coverage",
                   "smoothing",
                   "loadSaliency", "loadFusedAttention", "loadStageAttention", "loadDifferences",
                   "loadCounterfactuals"):
        assert needed in bound.values(), f"parameter {needed} has no widget"
    # the default outputs are checked in the .ui as in the parameter node
    checked = {w.get("name"): w.find("property[@name='checked']/bool").text
               for w in ui_widgets().values() if w.get("class") == "QCheckBox"
               and w.find("property[@name='checked']/bool") is not None}
    assert checked["loadSaliencyCheckBox"] == checked["loadFusedAttentionCheckBox"] == "true"
    assert checked["loadCounterfactualsCheckBox"] == "false"


def test_self_test_never_installs_and_skips_without_torch():
    """ACATTest runs under ctest in Slicer's testing mode: it must not call any installer."""
    tree = ast.parse(ACAT_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ACATTest")
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
              for n in ast.walk(cls) if isinstance(n, ast.Call)}
    assert not called & {"ensureDependencies", "ensure", "pip_install", "pip_ensure", "installTorch"}, called
    assert {"missing_all", "skipTest"} <= called
    source = ast.get_source_segment(ACAT_PY.read_text(), cls)
    assert 'device="cpu"' in source and 'coverage="sampled"' in source and "TIME_LIMIT_S = 120" in source
    assert '"left"' in source, "the self-test checks the sample head's lesion side"
    assert "installDependencies=False" in source


def test_glue_calls_the_engine_directly():
    for name in ("engine.py", "runner.py", "worker.py", "analysis.py"):
        text = (MODULE / "ACATLib" / name).read_text()
        assert "import inspect" not in text and "signature(" not in text and "ALIASES" not in text, name


def test_acat_py_imports_no_engine_or_torch_at_load():
    tree = ast.parse(ACAT_PY.read_text())
    top = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            top.append(node.module or "")
    heavy = [m for m in top if m.split(".")[0] in ("torch", "monai", "captum", "ACATCore")]
    assert not heavy, f"ACAT.py imports {heavy} at load time; import them at first use"


def test_module_cmake_lists_every_file():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    for item in scripts + resources:
        assert (MODULE / item).is_file(), f"CMake lists {item}, which does not exist"
    on_disk_py = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk_py == set(scripts), f"not listed: {on_disk_py - set(scripts)}; stale: {set(scripts) - on_disk_py}"
    on_disk_res = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert on_disk_res == set(resources), f"not listed: {on_disk_res - set(resources)}; stale: {set(resources) - on_disk_res}"
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", text)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # ACATCore is bundled by a configure-time glob of the whole package
    assert "${ACAT_SOURCE_ROOT}/ACATCore/*" in text and "${ACATCore_PYTHON_SCRIPTS}" in text


def test_top_level_cmake_and_extension_entry():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needed in ("project(ACAT)", 'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(ACATSlicer)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text, needed
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert f"set(EXTENSION_{key} " in text, key
    entry = json.loads((ROOT / "ACAT.json").read_text())
    for key in ("$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"):
        assert key in entry, key
    assert entry["build_dependencies"] == ["PyTorch"]
    assert (ROOT / "LICENSE.txt").is_file()


@pytest.mark.parametrize("icon", ["ACATSlicer/Resources/Icons/ACAT.png", "Resources/Icons/ACAT.png"])
def test_icons_are_128_png(icon):
    from PIL import Image
    with Image.open(ROOT / icon) as im:
        assert im.format == "PNG" and im.size == (128, 128)


STAND_IN_SLICER = {
    "SlicerConfig.cmake": """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
""",
    # Same existence check as Slicer's macro; records what it was given.
    "UseSlicer.cmake": """
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(v ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT IS_ABSOLUTE ${v})
      set(v ${CMAKE_CURRENT_SOURCE_DIR}/${v})
    endif()
    if(NOT EXISTS ${v})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file ${v}")
    endif()
  endforeach()
  file(WRITE ${CMAKE_BINARY_DIR}/scripts.txt "${MY_SCRIPTS}")
  file(WRITE ${CMAKE_BINARY_DIR}/resources.txt "${MY_RESOURCES}")
endmacro()
macro(slicer_add_python_unittest)
  file(WRITE ${CMAKE_BINARY_DIR}/unittest.txt "${ARGN}")
endmacro()
""",
    "Empty.cmake": "",
}


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_configures_against_a_stand_in_slicer(tmp_path):
    fake = tmp_path / "Slicer"
    fake.mkdir()
    for name, text in STAND_IN_SLICER.items():
        (fake / name).write_text(text)
    build = tmp_path / "build"
    out = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}", "-DBUILD_TESTING=ON"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    scripts = (build / "scripts.txt").read_text().split(";")
    bundled = {Path(s).relative_to(build / "ACATSlicer").as_posix() for s in scripts if Path(s).is_absolute()}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ACATCore").rglob("*.py")
                if "__pycache__" not in p.parts}
    assert bundled == expected, "every ACATCore .py is bundled beside ACAT.py"
    for rel in bundled:  # the copies Slicer's macro will install are the sources
        assert (build / "ACATSlicer" / rel).read_bytes() == (ROOT / rel).read_bytes()
    assert "SCRIPT;ACAT.py" in (build / "unittest.txt").read_text()
    modules_dir = build / "lib/Slicer-5.8/qt-scripted-modules"
    for sub in ("models", "data"):
        if (ROOT / "Resources" / sub).is_dir():
            assert (modules_dir / "Resources" / sub).is_dir(), f"Resources/{sub} is not bundled"
