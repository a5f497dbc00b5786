"""ACAT: Adversarial Counterfactual Attention for CT classification, as a 3D Slicer module.

This file is the thin Qt layer: module description, parameter node, widget, logic entry points and
the self-test. Everything that needs MRML but not Qt lives in ``ACATLib`` (tested outside Slicer);
the engine is ``ACATCore`` (no Slicer at all). Neither torch nor the engine is imported when this
module loads: dependencies are checked, and installed after asking the user, at the first run.
"""
import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _ensureImportPaths():
    """Make ``ACATCore`` importable: bundled beside this file in an installed extension; one level up
    in a source checkout added through "Additional module paths"."""
    here = Path(__file__).resolve().parent
    for candidate in (here, here.parent):
        if (candidate / "ACATCore" / "__init__.py").exists() and str(candidate) not in sys.path:
            sys.path.insert(0, str(candidate))
            break
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))


_ensureImportPaths()

import ACATLib  # noqa: E402  (MRML only: no torch, no Qt)
from ACATLib.dependencies import REQUIREMENTS, TORCH_REQUIREMENT, missing_requirements  # noqa: E402
from ACATLib.runner import BackgroundAnalysis  # noqa: E402

SAMPLE_NAME = "ACATHeadCT"
SAMPLE_FILE = "ACATSampleHeadCT.nrrd"
CITATION = ("A. Fontanella, A. Antoniou, W. Li, J. Wardlaw, G. Mair, E. Trucco, A. Storkey. <i>ACAT: "
            "Adversarial Counterfactual Attention for Classification and Detection in Medical Imaging.</i> "
            "Proceedings of the 40th International Conference on Machine Learning (ICML), PMLR 202, 2023.")


#
# Module
#

class ACAT(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ACAT"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["ACAT for 3D Slicer contributors"]
        self.parent.helpText = f"""
<p>Classifies a head or chest CT and explains the decision: class probabilities, a counterfactual
saliency map ("what would have to change for the other class"), the attention masks of ACAT
(early / middle / late / fused), counterfactual scans, per-slice attention weights and the hottest
region.</p>
<p>Method: {CITATION}</p>
<p><b>Limits of the shipped demo models.</b> The bundled brain and lung models are demonstration
weights trained on synthetic lesions inserted into a handful of public CT scans, not on patient
cohorts. They show how the method works; their outputs mean nothing about a real patient.
<b>Not for clinical use.</b> Load your own trained model file (see the "Model" selector) for research.</p>
<p>Everything runs on this computer; no image is sent anywhere. See
<a href="https://github.com/acat-slicer/SlicerACAT/blob/main/docs/SLICER.md">the documentation</a>.</p>
"""
        self.parent.acknowledgementText = """
ACAT was proposed by Fontanella et al. (ICML 2023). This extension re-implements the method for
3D Slicer. The sample head CT is a synthetic head derived from the CT brain atlas distributed with
TotalSegmentator (Apache-2.0).
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def _isSet(path):
    """A path parameter holds a real path (an unset pathlib.Path reads as '.')."""
    return bool(path) and str(path).strip() not in ("", ".")


def _sampleDataFile():
    """The sample head CT shipped with the extension (no download), or None when it is missing.

    It is an ACAT-Synth head (Resources/data/NOTICE): a full head CT with skull, air and one lesion. The
    CT brain atlas beside it is skull-stripped and has no air, so ACAT rightly refuses it as a CT."""
    here = Path(__file__).resolve().parent
    for root in (here / "Resources" / "data", here.parent / "Resources" / "data"):
        path = root / SAMPLE_FILE
        if path.is_file():
            return path
    return None


def registerSampleData():
    """Offer the shipped head CT in the Sample Data module. The file is local: nothing is downloaded."""
    try:
        import SampleData
    except ImportError:
        return
    path = _sampleDataFile()
    if path is None:
        logging.info("ACAT: no sample CT shipped under Resources/data; Sample Data entry not registered")
        return
    icons = Path(__file__).resolve().parent / "Resources" / "Icons"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="ACAT",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(icons / "ACAT.png"),
        uris=path.as_uri(),
        fileNames=path.name,
        nodeNames=SAMPLE_NAME,
        loadFileType="VolumeFile",
    )


#
# Parameter node
#

@parameterNodeWrapper
class ACATParameterNode:
    """Inputs, options and outputs of the module (saved with the scene)."""
    inputVolume: vtkMRMLScalarVolumeNode
    model: Annotated[str, Choice(["brain", "lung", "file"])] = "brain"
    modelFile: Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    counterfactualSteps: Annotated[int, WithinRange(1, 500)] = 20
    alpha: Annotated[float, WithinRange(0.0, 10000.0)] = 100.0
    coverage: Annotated[str, Choice(["full", "sampled"])] = "full"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    thresholdPercentile: Annotated[float, WithinRange(0.0, 100.0)] = 95.0
    # outputs of the last run
    saliencyVolume: vtkMRMLScalarVolumeNode
    overlayVolumes: list[vtkMRMLScalarVolumeNode]
    probabilityTable: vtkMRMLTableNode
    sliceWeightTable: vtkMRMLTableNode
    sliceWeightChart: vtkMRMLPlotChartNode


#
# Widget
#

class ACATWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 200

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._nodes = None
        self._timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ACAT.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ACATLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.overlaySelector.connect("currentIndexChanged(int)", self.onOverlayChanged)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.jumpToPeakButton.connect("clicked(bool)", self.onJumpToPeak)
        self.ui.showChartButton.connect("clicked(bool)", self.onShowChart)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self._updateModelFileVisibility)

        self.ui.progressBar.setVisible(False)
        self.ui.resultsCollapsibleButton.enabled = False
        self.ui.exportCollapsibleButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self):
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        self._nodes = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        if self._nodes is None and self._parameterNode.saliencyVolume:
            # results of a run saved with the scene: offer them again, without touching the views
            nodes = ACATLib.ResultNodes.from_scene(slicer.mrmlScene, self._parameterNode.saliencyVolume)
            if nodes is not None and nodes.probability_table is not None:
                self.showResults(nodes, showLayers=False)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()
            self._updateModelFileVisibility()

    def _updateModelFileVisibility(self, *_):
        isFile = self.ui.modelSelector.currentText == "file"
        self.ui.modelFilePathLineEdit.setVisible(isFile)
        self.ui.modelFileLabel.setVisible(isFile)

    def _checkCanApply(self, caller=None, event=None):
        if self._job is not None and not self._job.finished:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the running analysis"
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        p = self._parameterNode
        ready = bool(p and p.inputVolume and (p.model != "file" or _isSet(p.modelFile)))
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = "Run ACAT on the input volume" if ready else \
            "Select an input volume (and a model file when the model is 'file')"

    # ---------------------------------------------------------------- run
    def onApplyButton(self):
        if self._job is not None and not self._job.finished:
            self._job.cancel()
            self._setRunning(False, "Cancelled.")
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the ACAT analysis."):
            p = self._parameterNode
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            self._job = self.logic.processInBackground(
                p.inputVolume, model=self.logic.modelSpec(p.model, p.modelFile), device=p.device,
                steps=p.counterfactualSteps, alpha=p.alpha, coverage=p.coverage)
            self._setRunning(True, "Starting the analysis process...")
            self._timer.start()

    def _setRunning(self, running, message=""):
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = message
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.advancedCollapsibleButton.enabled = not running
        if not running:
            self._timer.stop()
        self._checkCanApply()

    def onPoll(self):
        job = self._job
        if job is None:
            self._timer.stop()
            return
        with slicer.util.tryWithErrorDisplay("ACAT analysis failed."):
            for event in job.poll():
                if event.fraction is not None:
                    self.ui.progressBar.setValue(int(round(100 * event.fraction)))
                self.ui.statusLabel.text = event.stage
            if not job.finished:
                return
            self._timer.stop()
            if job.state == "cancelled":
                self._setRunning(False, "Cancelled.")
            elif job.state == "failed":
                self._setRunning(False, "Failed.")
                raise RuntimeError(job.error or "the analysis process failed")
            else:
                self.ui.statusLabel.text = "Creating result nodes..."
                slicer.app.processEvents()
                p = self._parameterNode
                nodes = self.logic.createResultNodes(job.result, p.inputVolume,
                                                     thresholdPercentile=p.thresholdPercentile)
                self._job = None
                self._setRunning(False, f"Done in {job.elapsed_seconds:.0f} s.")
                self.showResults(nodes)

    # ---------------------------------------------------------------- results
    def showResults(self, nodes, showLayers=True):
        self._nodes = nodes
        p = self._parameterNode
        p.saliencyVolume = nodes.saliency
        p.overlayVolumes = [nodes.volumes[k] for k in nodes.overlay_kinds()]
        p.probabilityTable = nodes.probability_table
        p.sliceWeightTable = nodes.slice_weight_table
        p.sliceWeightChart = nodes.slice_weight_chart
        self.ui.resultsCollapsibleButton.enabled = True
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.exportCollapsibleButton.enabled = True
        self.ui.predictedClassLabel.text = f"<b>{nodes.predicted_class}</b>"
        table = self.ui.probabilityTableWidget
        rows = ACATLib.results.table_rows(nodes.probability_table)
        headers = [nodes.probability_table.GetColumnName(c)
                   for c in range(nodes.probability_table.GetNumberOfColumns())]
        table.clear()
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                text = f"{value:.3f}" if isinstance(value, float) else str(value)
                item = qt.QTableWidgetItem(text)
                if row[0] == nodes.predicted_class:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        if nodes.peak_point is not None:
            self.ui.peakLabel.text = nodes.peak_point.GetNthControlPointLabel(0)
        self.ui.jumpToPeakButton.enabled = nodes.peak_point is not None
        self.ui.showChartButton.enabled = nodes.slice_weight_chart is not None
        selector = self.ui.overlaySelector
        selector.blockSignals(True)
        selector.clear()
        for kind in nodes.overlay_kinds():
            selector.addItem(nodes.label(kind), kind)
        selector.setCurrentIndex(0)
        selector.blockSignals(False)
        if showLayers:
            self.onOverlayChanged()

    def _currentOverlayKind(self):
        index = self.ui.overlaySelector.currentIndex
        return self.ui.overlaySelector.itemData(index) if index >= 0 else None

    def onOverlayChanged(self, *_):
        if not self._nodes:
            return
        kind = self._currentOverlayKind()
        if not kind:
            return
        with slicer.util.tryWithErrorDisplay("Failed to show the overlay."):
            background, foreground = self._nodes.layers(kind)
            if foreground is not None:
                ACATLib.set_overlay_threshold(foreground, self.ui.thresholdSliderWidget.value)
            slicer.util.setSliceViewerLayers(background=background, foreground=foreground,
                                             foregroundOpacity=self.ui.opacitySliderWidget.value)

    def onOpacityChanged(self, value):
        if not self._nodes:
            return
        with slicer.util.tryWithErrorDisplay("Failed to change the overlay opacity."):
            for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
                slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").SetForegroundOpacity(value)

    def onThresholdChanged(self, value):
        if not self._nodes:
            return
        with slicer.util.tryWithErrorDisplay("Failed to change the overlay threshold."):
            kind = self._currentOverlayKind()
            if kind:
                _, foreground = self._nodes.layers(kind)
                if foreground is not None:
                    ACATLib.set_overlay_threshold(foreground, value)

    def onJumpToPeak(self):
        with slicer.util.tryWithErrorDisplay("Failed to jump to the hottest region."):
            point = self._nodes.peak_point if self._nodes else None
            if point is None or point.GetNumberOfControlPoints() == 0:
                raise RuntimeError("no saliency peak in the last result")
            ras = [0.0, 0.0, 0.0]
            point.GetNthControlPointPositionWorld(0, ras)
            slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *ras,
                                                  slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    def onShowChart(self):
        with slicer.util.tryWithErrorDisplay("Failed to show the slice-weight chart."):
            chart = self._nodes.slice_weight_chart if self._nodes else None
            if chart is None:
                raise RuntimeError("the last result has no slice weights")
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onExport(self):
        with slicer.util.tryWithErrorDisplay("Failed to export the ACAT results.", waitCursor=True):
            if not self._nodes:
                raise RuntimeError("run an analysis first")
            folder = self.ui.exportDirectoryButton.directory
            if not folder:
                raise RuntimeError("choose an output folder")
            written = self.logic.exportResults(self._nodes, folder, overwrite=self.ui.overwriteCheckBox.checked)
            self.ui.statusLabel.text = f"Exported {len(written)} files to {folder}"


#
# Logic
#

class ACATLogic(ScriptedLoadableModuleLogic):
    """Console use::

        logic = slicer.util.getModuleLogic("ACAT")
        nodes = logic.process(slicer.util.getNode("CTHead"), model="brain")
        nodes.volumes["saliency"], nodes.probability_table, nodes.peak_point
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ACATParameterNode(super().getParameterNode())

    @staticmethod
    def modelSpec(model, modelFile=None):
        """The ``model`` argument of the engine: "brain", "lung" or a model file path."""
        if model == "file":
            if not _isSet(modelFile):
                raise ValueError("choose a model file (.safetensors with its .json model card)")
            return str(modelFile)
        return model

    # ---------------------------------------------------------------- dependencies
    def ensureDependencies(self, askConfirmation=True):
        """Install missing Python packages after asking; returns False when the user declined.
        torch comes from the PyTorch extension when it is installed (right CUDA build for this
        computer), the rest from Resources/requirements.txt."""
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                PyTorchUtils = None
            try:
                if PyTorchUtils is not None:
                    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                        askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
                    if torch is None:
                        return False
                else:
                    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                            "ACAT needs PyTorch, which is not installed. Install it now with pip? (about 1 GB "
                            "download; install the 'PyTorch' extension instead to get a GPU build)."):
                        return False
                    slicer.util.pip_install(TORCH_REQUIREMENT)
            except Exception as exc:
                raise RuntimeError(f"Installing PyTorch failed: {exc}. Install the PyTorch extension from the "
                                   "Extensions Manager, or run slicer.util.pip_install('torch') in the Python "
                                   "console, then restart Slicer.") from exc
        missing = missing_requirements()
        if not missing:
            return True
        try:
            try:
                import slicer.packaging as packaging
            except ImportError:
                packaging = None
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                import inspect
                kwargs = {"requester": "ACAT"}
                if "prompt_install" in inspect.signature(packaging.pip_ensure).parameters:
                    kwargs["prompt_install"] = askConfirmation
                packaging.pip_ensure(packaging.load_requirements(str(REQUIREMENTS)), **kwargs)
            else:
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                        "ACAT needs these Python packages, which will be installed now:\n\n"
                        + "\n".join(missing) + "\n\nContinue?"):
                    return False
                slicer.util.pip_install(missing)
        except Exception as exc:
            raise RuntimeError(f"Installing ACAT's Python packages ({', '.join(missing)}) failed: {exc}. "
                               "Check the internet connection, or install them in the Python console with "
                               f"slicer.util.pip_install({missing!r}), then restart Slicer.") from exc
        still = missing_requirements()
        if still:
            raise RuntimeError(f"These packages are still missing after installation: {', '.join(still)}. "
                               "Restart Slicer and try again.")
        return True

    # ---------------------------------------------------------------- runs
    @staticmethod
    def _options(model, device, steps, alpha, coverage):
        return {"model": model, "device": device, "steps": int(steps), "alpha": float(alpha),
                "coverage": coverage}

    def process(self, inputVolumeNode, model="brain", device="auto", steps=20, alpha=100.0, coverage="full",
                thresholdPercentile=95.0, show=True, installDependencies=True, onProgress=None):
        """Analyse ``inputVolumeNode`` here and now (blocks) and return the created nodes
        (``ACATLib.ResultNodes``). For scripts and the console; ``onProgress(fraction, stage)``."""
        if inputVolumeNode is None:
            raise ValueError("inputVolumeNode is required")
        if installDependencies and not self.ensureDependencies(askConfirmation=True):
            raise RuntimeError("ACAT's Python dependencies are not installed")
        from ACATLib.engine import run_engine
        volume = ACATLib.volume_from_node(inputVolumeNode)
        result = run_engine(volume, self._options(model, device, steps, alpha, coverage), report=onProgress,
                            log=logging.info)
        nodes = self.createResultNodes(result, inputVolumeNode, thresholdPercentile=thresholdPercentile)
        if show and slicer.app.layoutManager() is not None:
            slicer.util.setSliceViewerLayers(background=inputVolumeNode, foreground=nodes.saliency,
                                             foregroundOpacity=0.5)
        return nodes

    def processInBackground(self, inputVolumeNode, model="brain", device="auto", steps=20, alpha=100.0,
                            coverage="full"):
        """Start the analysis in a separate PythonSlicer process and return the running
        ``ACATLib.runner.BackgroundAnalysis`` (poll it, cancel it, read ``.result`` when done)."""
        if inputVolumeNode is None:
            raise ValueError("select an input volume")
        python = shutil.which("PythonSlicer") or shutil.which("PythonSlicer.exe")
        if python is None:
            raise RuntimeError("PythonSlicer was not found next to Slicer; use ACATLogic.process() instead")
        volume = ACATLib.volume_from_node(inputVolumeNode)
        job = BackgroundAnalysis(volume, self._options(model, device, steps, alpha, coverage),
                                 python_executable=python, launcher=slicer.util.launchConsoleProcess)
        return job.start()

    def createResultNodes(self, result, inputVolumeNode, thresholdPercentile=95.0):
        return ACATLib.result_to_nodes(slicer.mrmlScene, result, inputVolumeNode,
                                       threshold_percentile=thresholdPercentile)

    def exportResults(self, nodes, folder, overwrite=False):
        from ACATLib.export import export_result_nodes
        return export_result_nodes(slicer.mrmlScene, nodes, folder, overwrite=overwrite)


#
# Test
#

class ACATTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (``slicer_add_python_unittest``): the demo brain model on the shipped CT."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ACAT_demo_on_sample()

    def test_ACAT_demo_on_sample(self):
        self.delayDisplay("Loading the sample head CT")
        path = _sampleDataFile()
        self.assertIsNotNone(path, "the extension ships no sample CT under Resources/data")
        inputVolume = slicer.util.loadVolume(str(path))
        logic = ACATLogic()
        self.delayDisplay("Running the demo brain model (background process)")
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        job = logic.processInBackground(inputVolume, model="brain", device="cpu", steps=2, coverage="sampled")
        result = job.wait(timeout=1800)
        nodes = logic.createResultNodes(result, inputVolume)
        self.assertAlmostEqual(float(sum(nodes.probabilities)), 1.0, places=4)
        saliency = nodes.saliency
        self.assertIsNotNone(saliency)
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(a)
        saliency.GetIJKToRASMatrix(b)
        for r in range(4):
            for c in range(4):
                self.assertEqual(a.GetElement(r, c), b.GetElement(r, c))
        self.assertEqual(saliency.GetDisplayNode().GetColorNodeID(), ACATLib.COLOR_PERCEPTUAL)
        self.assertIsNotNone(nodes.peak_point)
        self.delayDisplay("Test passed")
