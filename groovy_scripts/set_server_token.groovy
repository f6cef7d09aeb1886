/*
 * her2-qupath: store the server's access token in your QuPath user preferences
 * ===========================================================================
 *
 * `her2-qupath serve` prints an access token when it needs one. Run this
 * script once and paste the token into the dialog: the scoring scripts read
 * it from your user preferences (Java preferences node "her2-qupath"), so it
 * never has to be written into a script. An empty token removes it. Without
 * the QuPath window (headless), the token is taken from the environment
 * variable HER2_QUPATH_TOKEN. The scoring scripts also read that variable
 * first, so setting it is the alternative to this script.
 */

import java.util.prefs.Preferences

import static qupath.lib.gui.scripting.QPEx.*

/** Ask for the token in a dialog (QuPath 0.5+ and 0.4); null when there is no window or it was cancelled. */
String askToken() {
    if (getQuPath() == null) return null
    for (String name in ['qupath.fx.dialogs.Dialogs', 'qupath.lib.gui.dialogs.Dialogs']) {
        try {
            return Class.forName(name).getMethod('showInputDialog', String, String, String)
                    .invoke(null, 'her2-qupath', 'Access token printed by her2-qupath serve', '') as String
        } catch (ReflectiveOperationException | LinkageError ignored) {
            // not in this QuPath version: try the next one
        }
    }
    return null
}

String token = askToken()
if (token == null) token = System.getenv('HER2_QUPATH_TOKEN')
if (token == null) {
    println 'her2-qupath: no token given (cancelled, or no window and no HER2_QUPATH_TOKEN); nothing changed'
    return
}
def node = Preferences.userRoot().node('her2-qupath')
if (token.trim()) {
    node.put('token', token.trim())
    println 'her2-qupath: token stored in your user preferences; the scoring scripts will use it'
} else {
    node.remove('token')
    println 'her2-qupath: token removed from your user preferences'
}
node.flush()
