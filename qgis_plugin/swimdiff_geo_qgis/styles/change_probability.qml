<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <provider>
      <resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>
    </provider>
    <rasterrenderer opacity="1" type="singlebandpseudocolor" nodataColor="" alphaBand="-1" classificationMin="0" classificationMax="1" band="1">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <rastershader>
        <colorrampshader clip="0" labelPrecision="2" classificationMode="1" maximumValue="1" colorRampType="INTERPOLATED" minimumValue="0">
          <item color="#000004" value="0" alpha="255" label="0.00 (no change)"/>
          <item color="#3b0f70" value="0.2" alpha="255" label="0.20"/>
          <item color="#8c2981" value="0.4" alpha="255" label="0.40"/>
          <item color="#de4968" value="0.6" alpha="255" label="0.60"/>
          <item color="#fe9f6d" value="0.8" alpha="255" label="0.80"/>
          <item color="#fcfdbf" value="1" alpha="255" label="1.00 (change)"/>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast contrast="0" gamma="1" brightness="0"/>
    <huesaturation colorizeOn="0" saturation="0" grayscaleMode="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" invertColors="0" colorizeStrength="100"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
