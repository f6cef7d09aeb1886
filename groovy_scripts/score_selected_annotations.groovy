/*
 * her2-qupath: HER2 score of the selected annotations (or of the whole image)
 * ===========================================================================
 *
 * Sends the current image (its path/URI and pixel size) and the selected
 * annotations to a running her2-qupath server, waits for the job while the
 * progress is written to the log, and adds the results to the image:
 *   - one detection per tile (or cell), classified "HER2 0" ... "HER2 3+",
 *   - one annotation per scored region with the HER2 score and measurements.
 * Each selected region is scored as its own job. Re-running replaces exactly
 * the objects this product added for that region (their names end in
 * "#<region id>"; "#image" for the whole image) and never duplicates them;
 * results of `her2-qupath batch` (no tag) are replaced inside the region.
 * Your own objects are never touched. Stopping the script (Kill running
 * script) cancels its job on the server. An image of type "Not set" is set
 * to Brightfield (H-DAB).
 *
 * Start the server first, on the machine that can read the image files:
 *     her2-qupath serve
 * then run this script from Automate > Shared scripts... (or Project scripts...),
 * with her2_qupath_common.groovy (the part it shares with score_pair.groovy) in
 * the same folder. Works with QuPath 0.4, 0.5 and 0.6.
 */

import groovy.transform.Field

// ---------------------------------------------------------------- settings --
// Address of the server started with `her2-qupath serve` (default port 8765).
@Field String SERVER_URL = 'http://127.0.0.1:8765'
// The access token (printed by `her2-qupath serve` when it needs one) is never written here:
// set the environment variable HER2_QUPATH_TOKEN, or run set_server_token.groovy once.
// Clinical rule: 'breast' (ASCO/CAP 2018/2023), 'gastric' or 'endometrial'.
@Field String GUIDELINE = 'breast'
// 'pixel' (stained tumour area) or 'cell' (tumour cells with membrane staining).
@Field String LEVEL = 'pixel'
// 'guideline' (clinical rule) or 'paper' (the published tile algorithm).
@Field String AGGREGATION = 'guideline'
// With no annotation selected: true scores the whole image, false stops.
@Field boolean WHOLE_IMAGE_IF_NOTHING_SELECTED = true
// Seconds between progress checks, and the longest wait in minutes.
@Field double POLL_SECONDS = 1.0
@Field double MAX_WAIT_MINUTES = 120
// Names of every object this product writes start with this marker.
@Field String MARKER = 'her2-qupath'
// ------------------------------------------------------------------------------

// The shared part, from this script's folder (QuPath passes a script its file as "qupath.script.file").
File common = new File(new File(binding.variables['qupath.script.file'] ?: '.').absoluteFile.parentFile, 'her2_qupath_common.groovy')
if (!common.isFile()) throw new IllegalStateException("her2-qupath: ${common} not found: run this script from its file, with her2_qupath_common.groovy beside it")
def her2 = new GroovyShell(this.class.classLoader).evaluate(common)
        .newInstance(SERVER_URL, GUIDELINE, LEVEL, AGGREGATION, POLL_SECONDS, MAX_WAIT_MINUTES, MARKER)

her2.run { Map image, List regions ->
    if (!regions && !WHOLE_IMAGE_IF_NOTHING_SELECTED)
        her2.fail('select one or more annotations to score (or set WHOLE_IMAGE_IF_NOTHING_SELECTED = true)')
    her2.scoreEach(image, regions,
            { region -> [rois: region == null ? null : [type: 'FeatureCollection', features: her2.featuresOf([region])]] },
            { region -> region == null ? 'the whole image' : "region '${region.getName() ?: her2.tagOf(region)}'" })
}
