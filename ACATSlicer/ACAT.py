"""ACAT: Adversarial Counterfactual Attention for CT classification, as a 3D Slicer module.

This file is the thin Qt layer: module description, parameter node, widget, logic entry points and
the self-test. Everything under the widget (running, result nodes, display, dependencies) lives in
``ACATLib`` and is tested on real MRML nodes outside Slicer;
the engine is ``ACATCore`` (no Slicer at all). Neither torch nor the engine is imported when this
module loads: dependencies are checked, and installed after asking the user, at the first run.
"""
import logging
import sys
import tempfile
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
from ACATLib import analysis, dependencies, display  # noqa: E402
from ACATLib.outputs import outputs_from_flags  # noqa: E402
from ACATLib.engine import DEFAULT_STEPS, MAX_SMOOTHING, SHOWN_SMOOTHING  # noqa: E402  (the engine's defaults; no torch)

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
    counterfactualSteps: Annotated[int, WithinRange(1, 500)] = DEFAULT_STEPS
    alpha: Annotated[float, WithinRange(0.0, 10000.0)] = 100.0
    coverage: Annotated[str, Choice(["full", "sampled"])] = "full"
    smoothing: Annotated[float, WithinRange(0.0, MAX_SMOOTHING)] = SHOWN_SMOOTHING
    # outputs to load (each full-size map costs memory: see ACATLib.outputs)
    loadSaliency: bool = True
    loadFusedAttention: bool = True
    loadStageAttention: bool = False
    loadDifferences: bool = False
    loadCounterfactuals: bool = False
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    thresholdPercentile: Annotated[float, WithinRange(0.0, 100.0)] = 95.0
    # outputs of the last run
    saliencyVolume: vtkMRMLScalarVolumeNode
    overlayVolumes: list[vtkMRMLScalarVolumeNode]
    probabilityTable: vtkMRMLTableNode
    sliceWeightTable: vtkMRMLTableNode
    sliceWeightChart: vtkMRMLPlotChartNode


def _outputs(p):
    return outputs_from_flags(p.loadSaliency, p.loadFusedAttention, p.loadStageAttention, p.loadDifferences,
                              p.loadCounterfactuals)


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
        self._cancelJob()
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
        self._cancelJob()
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

    def _running(self):
        return self._job is not None and not self._job.finished

    def _cancelJob(self):
        if self._running():
            self._job.cancel()   # stops the whole worker process tree, then deletes its folder

    def _checkCanApply(self, caller=None, event=None):
        if self._running():
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the running analysis"
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        p = self._parameterNode
        ready = bool(p and p.inputVolume and (p.model != "file" or _isSet(p.modelFile)) and _outputs(p))
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = "Run ACAT on the input volume" if ready else \
            "Select an input volume, at least one output (and a model file when the model is 'file')"

    # ---------------------------------------------------------------- run
    def onApplyButton(self):
        if self._running():
            self._cancelJob()
            self._setRunning(False, "Cancelled.")
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the ACAT analysis."):
            p = self._parameterNode
            try:
                self.logic.ensureDependencies(askConfirmation=True)
            except dependencies.DependenciesMissing as exc:
                self.ui.statusLabel.text = "Python packages missing: nothing was run."
                slicer.util.infoDisplay(str(exc), windowTitle="ACAT - Python packages")
                return
            self._job = self.logic.processInBackground(
                p.inputVolume, model=analysis.model_spec(p.model, p.modelFile), device=p.device,
                steps=p.counterfactualSteps, alpha=p.alpha, coverage=p.coverage, smoothing=p.smoothing,
                outputs=_outputs(p))
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
                nodes = analysis.finish_background(slicer.mrmlScene, job, self._parameterNode.inputVolume,
                                                   threshold_percentile=self._parameterNode.thresholdPercentile)
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
        self.ui.predictedClassLabel.text = nodes.prediction_label()
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
                item = qt.QTableWidgetItem(f"{value:.3f}" if isinstance(value, float) else str(value))
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
        kind = self._currentOverlayKind() if self._nodes else None
        if kind:
            with slicer.util.tryWithErrorDisplay("Failed to show the overlay."):
                display.show_output(slicer.mrmlScene, self._nodes, kind, self.ui.opacitySliderWidget.value,
                                    self.ui.thresholdSliderWidget.value)

    def onOpacityChanged(self, value):
        if self._nodes:
            display.set_opacity(slicer.mrmlScene, value)

    def onThresholdChanged(self, value):
        kind = self._currentOverlayKind() if self._nodes else None
        if kind:
            with slicer.util.tryWithErrorDisplay("Failed to change the overlay threshold."):
                display.set_threshold(self._nodes, kind, value)

    def onJumpToPeak(self):
        with slicer.util.tryWithErrorDisplay("Failed to jump to the hottest region."):
            if not self._nodes:
                raise RuntimeError("run an analysis first")
            display.jump_to_peak(slicer.mrmlScene, self._nodes)

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
    """Console use (the work is done by ``ACATLib.analysis``)::

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
        return analysis.model_spec(model, modelFile)

    def ensureDependencies(self, askConfirmation=True):
        """Install what ACAT lacks with this Slicer's dependency API, after asking; never in testing
        mode. Raises ``ACATLib.dependencies.DependenciesMissing`` with what to do when not installed."""
        dependencies.ensure(slicer, ask=askConfirmation)

    def process(self, inputVolumeNode, model="brain", device="auto", steps=DEFAULT_STEPS, alpha=100.0, coverage="full",
                smoothing=SHOWN_SMOOTHING, outputs=ACATLib.DEFAULT_OUTPUTS, thresholdPercentile=95.0, show=True,
                installDependencies=True, onProgress=None):
        """Analyse ``inputVolumeNode`` here and now (blocks) and return the created nodes
        (``ACATLib.ResultNodes``). ``onProgress(fraction, stage)``."""
        if installDependencies:
            self.ensureDependencies(askConfirmation=True)
        nodes = analysis.process(slicer.mrmlScene, inputVolumeNode,
                                 dict(model=model, device=device, steps=steps, alpha=alpha, coverage=coverage,
                                      smoothing=smoothing),
                                 outputs=outputs, threshold_percentile=thresholdPercentile, report=onProgress)
        kinds = nodes.overlay_kinds()
        if show and kinds and slicer.app.layoutManager() is not None:
            display.show_output(slicer.mrmlScene, nodes, kinds[0], 0.5, thresholdPercentile)
        return nodes

    def processInBackground(self, inputVolumeNode, model="brain", device="auto", steps=DEFAULT_STEPS, alpha=100.0,
                            coverage="full", smoothing=SHOWN_SMOOTHING, outputs=ACATLib.DEFAULT_OUTPUTS):
        """Start the analysis in a separate PythonSlicer process and return the running
        ``ACATLib.runner.BackgroundAnalysis`` (poll, wait or cancel it; then ``createResultNodes``)."""
        python = analysis.find_python_slicer()
        if python is None:
            raise RuntimeError("PythonSlicer was not found next to Slicer; use ACATLogic.process() instead")
        return analysis.start_background(
            inputVolumeNode, dict(model=model, device=device, steps=steps, alpha=alpha, coverage=coverage,
                                  smoothing=smoothing),
            outputs=outputs, python_executable=python, launcher=slicer.util.launchConsoleProcess)

    def createResultNodes(self, job, inputVolumeNode, thresholdPercentile=95.0):
        """The nodes of a finished background ``job`` (replacing earlier results of the same input)."""
        return analysis.finish_background(slicer.mrmlScene, job, inputVolumeNode, thresholdPercentile)

    def exportResults(self, nodes, folder, overwrite=False):
        from ACATLib.export import export_result_nodes
        return export_result_nodes(slicer.mrmlScene, nodes, folder, overwrite=overwrite)


#
# Test
#

class ACATTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest through ``slicer_add_python_unittest``, or "Reload and Test"): the
    shipped demo brain model on the shipped sample head, on the CPU, in under 2 minutes.

    It never installs anything (Slicer's testing mode; ACATLib.dependencies checks before any installer)
    and is skipped, saying why, when PyTorch or another required package is missing."""

    TIME_LIMIT_S = 120

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ACAT_demo_on_sample()

    def test_ACAT_demo_on_sample(self):
        import time
        missing = dependencies.missing_all()
        if missing:
            self.skipTest("ACAT self-test skipped: " + dependencies.what_to_do(missing))
        path = _sampleDataFile()
        self.assertIsNotNone(path, "the extension ships no sample CT under Resources/data")
        self.delayDisplay("Loading the sample head CT")
        inputVolume = slicer.util.loadVolume(str(path))
        logic = ACATLogic()
        started = time.time()
        options = dict(model="brain", device="cpu", steps=2, coverage="sampled")
        if analysis.find_python_slicer() is not None:
            self.delayDisplay("Running the demo brain model (background PythonSlicer process)")
            job = logic.processInBackground(inputVolume, **options)
            job.wait(timeout=self.TIME_LIMIT_S)
            nodes = logic.createResultNodes(job, inputVolume)
        else:
            self.delayDisplay("Running the demo brain model (in this process)")
            nodes = logic.process(inputVolume, installDependencies=False, show=False, **options)
        elapsed = time.time() - started
        self.assertLess(elapsed, self.TIME_LIMIT_S)
        self.assertAlmostEqual(float(sum(nodes.probabilities)), 1.0, places=4)
        self.assertEqual(nodes.predicted_class, "left", "the sample head has its lesion on the left")
        self.assertEqual(sorted(nodes.volumes), ["attention:fused", "saliency"])   # the default outputs
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(a)
        for node in nodes.volumes.values():
            node.GetIJKToRASMatrix(b)
            for r in range(4):
                for c in range(4):
                    self.assertEqual(a.GetElement(r, c), b.GetElement(r, c))
        # the colour table Slicer's own colour logic names Inferno exists in this scene
        inferno = slicer.modules.colors.logic().GetFileColorNodeID("Inferno.txt")
        self.assertEqual(nodes.saliency.GetDisplayNode().GetColorNodeID(), inferno)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(inferno))
        self.assertIsNotNone(nodes.peak_point)
        # showing it, then a second load of the same result replaces the nodes instead of adding more
        display.show_output(slicer.mrmlScene, nodes, "saliency", 0.5, 95.0)
        count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        if analysis.find_python_slicer() is not None:
            logic.createResultNodes(job, inputVolume)
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), count)
        # a scene saved as MRB and loaded again keeps the results
        with tempfile.TemporaryDirectory() as folder:
            mrb = str(Path(folder) / "acat-selftest.mrb")
            self.assertTrue(slicer.util.saveScene(mrb))
            slicer.mrmlScene.Clear()
            slicer.util.loadScene(mrb)
        restored = [slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        saliency = next(n for n in restored if n.GetAttribute("ACAT.kind") == "saliency")
        again = ACATLib.ResultNodes.from_scene(slicer.mrmlScene, saliency)
        self.assertEqual(again.predicted_class, "left")
        self.assertEqual(saliency.GetDisplayNode().GetColorNodeID(), inferno)
        self.assertIsNotNone(again.slice_weight_chart)
        self.delayDisplay(f"Test passed ({elapsed:.0f} s)")
