// Usage: groovy -cp tests/groovy_stubs run_with_stub.groovy STATE.json SCRIPT.groovy OUT.json
import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import qupath.lib.gui.scripting.QPEx

QPEx.load(new JsonSlurper().parse(new File(args[0])) as Map)
def shell = new GroovyShell(this.class.classLoader, new Binding())
try {
    shell.evaluate(new File(args[1]))
} finally {
    new File(args[2]).text = JsonOutput.toJson(QPEx.record())
}
