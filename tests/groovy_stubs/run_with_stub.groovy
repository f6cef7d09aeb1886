// Usage: groovy -cp tests/groovy_stubs run_with_stub.groovy STATE.json SCRIPT.groovy OUT.json
// The script runs on its own thread; with "interrupt_when" (a file path) in the state it is
// interrupted as soon as that file exists, as QuPath's "Kill running script" does.
import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import qupath.lib.gui.scripting.QPEx

Map state = new JsonSlurper().parse(new File(args[0])) as Map
QPEx.load(state)
// QuPath (0.4+) tells a script run from a file its path, as the engine-scope attribute
// "qupath.script.file" (DefaultScriptLanguage); the scripts find their shared part with it
def shell = new GroovyShell(this.class.classLoader, new Binding(['qupath.script.file': new File(args[1]).absolutePath]))
Throwable failure = null
def runner = new Thread({
    try {
        shell.evaluate(new File(args[1]))
    } catch (Throwable e) {
        failure = e
    }
})
runner.start()
if (state.interrupt_when) {
    def flag = new File(state.interrupt_when as String)
    while (runner.isAlive() && !flag.exists()) Thread.sleep(10)
    if (runner.isAlive()) runner.interrupt()
}
runner.join()
new File(args[2]).text = JsonOutput.toJson(QPEx.record())
if (failure != null) throw failure
